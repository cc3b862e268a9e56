"""One shard per process: `raft-data generate --shard i --num-shards N`, in any order, even at the same time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raft_data import storage
from raft_data.cli.stages import generate_command as main
from raft_data.errors import ConfigError, StageError
from raft_data.stages.generate import generate
from raft_data.storage.shards import shard_lock

from .conftest import ROOT, make_config


def samples_dir(cfg) -> Path:
    return storage.round_dir(cfg, 0) / "samples"


def test_shards_in_separate_processes_match_one_run(tmp_path, tiny_model_dir, prompts_file):
    """Each shard's samples depend on (seed, round, shard) only, never on the process or the order that ran it."""
    single = make_config(tmp_path / "single", tiny_model_dir, prompts_file)
    generate(single, 0)

    sharded = make_config(tmp_path / "sharded", tiny_model_dir, prompts_file)
    config_file = tmp_path / "sharded.yaml"
    config_file.write_text(sharded.to_yaml(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # three workers started together in reverse order, as a job array would
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "raft_data", "generate", "--config", str(config_file), "--round", "0"]
            + ["--shard", str(i), "--num-shards", "3"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (2, 1, 0)
    ]
    for w in workers:
        out, _ = w.communicate(timeout=300)
        assert w.returncode == 0, out

    names = [p.name for p in storage.shard_files(samples_dir(single))]
    assert names == [p.name for p in storage.shard_files(samples_dir(sharded))]
    assert len(names) == 3
    for name in names:
        assert (samples_dir(single) / name).read_bytes() == (samples_dir(sharded) / name).read_bytes(), name
    one = storage.round_dir(single, 0) / "prompts.parquet"
    many = storage.round_dir(sharded, 0) / "prompts.parquet"
    assert one.read_bytes() == many.read_bytes()
    manifest = storage.read_json(samples_dir(sharded) / "manifest.json")
    assert manifest["counts"]["samples"] == 8 * 3
    assert manifest["config_hash"] == storage.read_json(samples_dir(single) / "manifest.json")["config_hash"]


def test_manifest_waits_for_every_shard(tmp_path, tiny_config):
    rdir = storage.round_dir(tiny_config, 0)
    assert generate(tiny_config, 0, shard=2, num_shards=3) is None
    assert not (samples_dir(tiny_config) / "manifest.json").exists()
    assert [p.name for p in storage.shard_files(samples_dir(tiny_config))] == ["shard-00002-of-00003.parquet"]

    # a plain run leaves a shard that another worker holds, and does not finalise without it
    with shard_lock(rdir, "generate", 1, 3):
        assert generate(tiny_config, 0) is None
        with pytest.raises(StageError, match="already running"):
            generate(tiny_config, 0, shard=1)
    assert not (samples_dir(tiny_config) / "manifest.json").exists()
    assert len(storage.shard_files(samples_dir(tiny_config))) == 2

    manifest = generate(tiny_config, 0, shard=1, num_shards=3)  # the last finisher writes the manifest
    assert manifest is not None and manifest["counts"]["samples"] == 8 * 3
    assert (samples_dir(tiny_config) / "manifest.json").exists()
    assert generate(tiny_config, 0, shard=0)["config_hash"] == manifest["config_hash"]  # done: skipped


def test_plain_rerun_finalises_finished_shards(tmp_path, tiny_config):
    for i in range(3):
        generate(tiny_config, 0, shard=i)
    (samples_dir(tiny_config) / "manifest.json").unlink()  # as if the last worker died before writing it
    before = {p.name: p.read_bytes() for p in storage.shard_files(samples_dir(tiny_config))}
    manifest = generate(tiny_config, 0)
    assert manifest["counts"]["samples"] == 24
    assert before == {p.name: p.read_bytes() for p in storage.shard_files(samples_dir(tiny_config))}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shard", "0", "--num-shards", "4"], "--num-shards=4 does not match generate.n_shards=3"),
        (["--shard", "3"], "--shard=3 is invalid"),
        (["--shard", "0", "--force"], "--force with --shard"),
    ],
)
def test_shard_arguments_are_checked(tmp_path, tiny_config, capsys, argv, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(tiny_config.to_yaml(), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(config_file), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not samples_dir(tiny_config).exists() or not storage.shard_files(samples_dir(tiny_config))


def test_num_shards_must_match_config(tiny_config):
    with pytest.raises(ConfigError, match="generate.n_shards=3"):
        generate(tiny_config, 0, shard=0, num_shards=2)
