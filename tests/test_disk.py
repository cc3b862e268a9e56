"""Disk failures are one line: a full disk, a read-only file system and a refused file give one line naming the path
and what to do, exit status 2, and leave nothing half-written that holds space or blocks the rerun.

The full disk and the read-only file system are real: a small tmpfs in a private mount namespace (`unshare`),
where the machine allows one; a refused file (an immutable one, no rights) is simulated in-process."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raft_data import storage
from raft_data.cli.main import main

from .conftest import ROOT, make_config

STAGES = [
    ("generate", ["raft_data", "generate"]),
    ("score", ["raft_data", "score"]),
    ("select", ["raft_data", "select"]),
    ("train", ["raft_data.cli.sft", "train"]),
    ("eval", ["raft_data", "eval"]),
]


def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def script(runs: Path, config: Path) -> str:
    """A shell script run in a private mount namespace: for each stage of round 0, fill the disk, run the stage
    (it must fail cleanly), free the disk, run it again (it must finish); then the read-only case."""
    py = f"{sys.executable} -m"
    lines = ["set -u", f"mount -t tmpfs -o size=48m tmpfs {runs}", f"cd {ROOT}"]
    for name, cmd in STAGES:
        run = f"{py} {' '.join(cmd)} --config {config} --round 0"
        lines += [
            f"dd if=/dev/zero of={runs}/filler bs=64k 2>/dev/null",
            f"{run} >/dev/null 2>{runs}/../{name}.err; echo $? >{runs}/../{name}.rc",
            f"find {runs} -name '*.tmp' >{runs}/../{name}.left",
            f"rm {runs}/filler",
            f"{run} >/dev/null 2>{runs}/../{name}.err2; echo $? >{runs}/../{name}.rc2",
        ]
    run = f"{py} raft_data generate --config {config} --round 1"
    lines += [
        f"mount -o remount,ro {runs}",
        f"{run} >/dev/null 2>{runs}/../ro.err; echo $? >{runs}/../ro.rc",
        f"{py} raft_data status --verify --config {config} --round 0 >/dev/null 2>&1; echo $? >{runs}/../ro_status.rc",
        f"mount -o remount,rw {runs}",
        f"{run} >/dev/null 2>{runs}/../ro.err2; echo $? >{runs}/../ro.rc2",
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(not namespaces_work(), reason="no private mount namespace here (unshare -rm, tmpfs)")
def test_full_disk_and_read_only_file_system_are_one_line_and_the_rerun_finishes(
    tmp_path, tiny_model_dir, prompts_file
):
    runs = tmp_path / "runs"
    runs.mkdir()
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        prompts={"heldout_fraction": 0.3},
        eval={"n_prompts": 2, "n_samples": 1},
    )
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(["unshare", "-rm", "sh", "-c", script(runs, config)], env=env, check=True, timeout=900)

    for name, _ in STAGES:
        err = (tmp_path / f"{name}.err").read_text()
        assert (tmp_path / f"{name}.rc").read_text().strip() == "2", (name, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert "disk is full" in lines[0] and str(runs) in lines[0], (name, lines[0])
        assert (tmp_path / f"{name}.left").read_text() == "", (name, "half-written files left behind")
        assert (tmp_path / f"{name}.rc2").read_text().strip() == "0", (name, (tmp_path / f"{name}.err2").read_text())
    err = (tmp_path / "ro.err").read_text()
    assert (tmp_path / "ro.rc").read_text().strip() == "2" and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "read-only" in lines[0] and str(runs) in lines[0], err
    assert (tmp_path / "ro_status.rc").read_text().strip() == "0"  # looking needs no writing
    assert (tmp_path / "ro.rc2").read_text().strip() == "0", (tmp_path / "ro.err2").read_text()


@pytest.mark.parametrize("code, words", [(errno.EPERM, "not permitted"), (errno.EACCES, "permission denied")])
@pytest.mark.parametrize("stage", ["generate", "score", "select"])
def test_a_refused_file_is_one_line_and_blocks_nothing(tmp_path, tiny_config, monkeypatch, capsys, code, words, stage):
    config = tmp_path / "exp.yaml"
    config.write_text(tiny_config.to_yaml(), encoding="utf-8")
    order = ["generate", "score", "select"]
    for earlier in order[: order.index(stage)]:
        main([earlier, "--config", str(config)])
    real_replace = os.replace

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(SystemExit) as e:
        main([stage, "--config", str(config)])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and words in err[0] and "cannot write" in err[0]
    rdir = storage.round_dir(tiny_config, 0)
    assert not [p for p in rdir.rglob("*") if p.name.endswith(".tmp") and p.is_file()]
    monkeypatch.setattr(os, "replace", real_replace)
    main([stage, "--config", str(config)])  # the corrected rerun, without --force
    assert (rdir / storage.STAGE_FOLDERS[stage] / "manifest.json").exists()
