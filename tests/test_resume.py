"""Kill -9 in the middle of generation; a rerun redoes only unfinished shards and selects the same data."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from raft_data import storage

from .conftest import ROOT, make_config


def stage(cfg_path: Path, command: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "raft_data", command, "--config", str(cfg_path), "--round", "0", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_round(cfg_path: Path) -> None:
    for command in ("generate", "score", "select"):
        proc = stage(cfg_path, command)
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()


def test_kill_9_during_generation_then_rerun_completes_the_round(tmp_path, tiny_model_dir, prompts_file) -> None:
    slow = {"n_prompts": 12}
    gen = {"n_shards": 6, "batch_size": 1, "max_new_tokens": 96, "n_samples": 4}
    killed = make_config(tmp_path / "killed", tiny_model_dir, prompts_file, prompts=slow, generate=gen)
    clean = make_config(tmp_path / "clean", tiny_model_dir, prompts_file, prompts=slow, generate=gen)
    paths = {}
    for name, cfg in (("killed", killed), ("clean", clean)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(cfg.to_yaml())

    samples_dir = storage.round_dir(killed, 0) / "samples"
    proc = stage(paths["killed"], "generate")
    deadline = time.time() + 1200
    while not list(samples_dir.glob("*.done")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(samples_dir.glob("*.done")))
    assert 1 <= done_at_kill < 6, "the kill must land between the first and the last shard"
    assert not (samples_dir / "manifest.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in samples_dir.glob("*.parquet") if storage.marker_path(p).exists()}

    run_round(paths["killed"])
    for path, mtime in mtimes.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was finished before the kill and must not be redone"
    run_round(paths["clean"])

    def selected(cfg):
        return pq.read_table(storage.round_dir(cfg, 0) / "selected" / storage.shard_name(0, 1))

    assert selected(killed).equals(selected(clean))
    assert not list(samples_dir.glob("*.tmp"))
