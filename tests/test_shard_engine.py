"""The shard engine: score and eval work in shards like generate. Three workers started together in reverse order,
the submitit executor (its local cluster runs the same code path as a Slurm array) and a worker killed mid-stage
all end with the bytes of one uninterrupted process. On the tiny model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raft_data import storage
from raft_data.stages.evaluate import evaluate
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_sft.train import train

from .conftest import ROOT, make_config

SHARDS = 3


def experiment(tmp_path: Path, model: Path, prompts: Path, name: str, **sections):
    """A config whose eval is in three shards of held-out prompts; rounds ready up to the stage under test."""
    return make_config(
        tmp_path / name,
        model,
        prompts,
        prompts={"heldout_fraction": 0.3},
        eval={"n_prompts": 4, "n_samples": 2, "n_shards": SHARDS},
        **sections,
    )


def prepare(cfg, stage: str) -> None:
    generate(cfg, 0)
    if stage == "eval":
        score(cfg, 0)
        select(cfg, 0)
        train(cfg, 0)


def run_stage(cfg, stage: str) -> None:
    {"score": score, "eval": evaluate}[stage](cfg, 0)


def stage_bytes(cfg, stage: str) -> dict[str, bytes]:
    folders = [storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS[stage]]
    if stage == "eval":
        folders.append(storage.baseline_dir(cfg))
    return {f"{f.parent.name}/{p.name}": p.read_bytes() for f in folders for p in storage.shard_files(f)}


def worker(config: Path, stage: str, shard: int | None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "raft_data", stage, "--config", str(config), "--round", "0"]
    if shard is not None:
        cmd += ["--shard", str(shard), "--num-shards", str(SHARDS)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.parametrize("stage", ["score", "eval"])
def test_three_workers_in_reverse_order_match_one_process(tmp_path, tiny_model_dir, prompts_file, stage):
    single = experiment(tmp_path, tiny_model_dir, prompts_file, "single")
    prepare(single, stage)
    run_stage(single, stage)

    sharded = experiment(tmp_path, tiny_model_dir, prompts_file, "sharded")
    prepare(sharded, stage)
    config = tmp_path / "sharded.yaml"
    config.write_text(sharded.to_yaml(), encoding="utf-8")
    workers = [worker(config, stage, i) for i in (2, 1, 0)]  # as a job array would start them
    for w in workers:
        out, _ = w.communicate(timeout=600)
        assert w.returncode == 0, out

    expected = stage_bytes(single, stage)
    assert len(expected) == (SHARDS if stage == "score" else 2 * SHARDS)
    assert stage_bytes(sharded, stage) == expected
    folder = storage.round_dir(sharded, 0) / storage.STAGE_FOLDERS[stage]
    manifest = storage.read_json(folder / "manifest.json")  # the last worker to finish wrote it
    want = storage.read_json(storage.round_dir(single, 0) / storage.STAGE_FOLDERS[stage] / "manifest.json")
    assert manifest["identity"] == want["identity"]
    if stage == "eval":
        assert manifest["metrics"].keys() == want["metrics"].keys()
        for key, value in want["metrics"].items():  # DuckDB may sum the round's rewards in another order
            assert manifest["metrics"][key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert manifest["cost"]["wall_s"] > 0 and manifest["cost"]["cpu_s"] > 0


@pytest.mark.parametrize("stage", ["score", "eval"])
def test_submitit_local_executor_matches_one_process(tmp_path, tiny_model_dir, prompts_file, stage):
    pytest.importorskip("submitit")
    single = experiment(tmp_path, tiny_model_dir, prompts_file, "single")
    prepare(single, stage)
    run_stage(single, stage)

    executor = {"kind": "slurm", "submitit_cluster": "local", "slurm_cpus_per_task": 1}
    arrayed = experiment(tmp_path, tiny_model_dir, prompts_file, "arrayed", executor=executor)
    prepare(arrayed, stage)
    run_stage(arrayed, stage)
    assert stage_bytes(arrayed, stage) == stage_bytes(single, stage)
    logs = storage.experiment_dir(arrayed) / "slurm_logs"
    assert any(logs.glob("*_result.pkl")) or any(logs.iterdir())  # the array's tasks ran through submitit
    # the executor is not part of the config hash: the same round finishes under any executor
    folder = storage.STAGE_FOLDERS[stage]
    a = storage.read_json(storage.round_dir(arrayed, 0) / folder / "manifest.json")
    b = storage.read_json(storage.round_dir(single, 0) / folder / "manifest.json")
    assert a["config_hash"] == b["config_hash"]


def kill_when_a_shard_is_done(proc: subprocess.Popen, folder: Path, timeout: float = 300) -> None:
    start = time.time()
    while not list(folder.glob("shard-*.done")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() - start < timeout
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("stage", ["score", "eval"])
@pytest.mark.parametrize("executor", ["local", "slurm", "ray"])
def test_a_worker_killed_mid_stage_resumes_to_the_same_bytes(tmp_path, tiny_model_dir, prompts_file, stage, executor):
    pytest.importorskip({"local": "pyarrow", "slurm": "submitit", "ray": "ray"}[executor])
    single = experiment(tmp_path, tiny_model_dir, prompts_file, "single")
    prepare(single, stage)
    run_stage(single, stage)

    settings = {"kind": executor, "submitit_cluster": "local", "slurm_cpus_per_task": 1}
    killed = experiment(tmp_path, tiny_model_dir, prompts_file, "killed", executor=settings)
    prepare(killed, stage)
    config = tmp_path / "killed.yaml"
    config.write_text(killed.to_yaml(), encoding="utf-8")
    folder = storage.round_dir(killed, 0) / storage.STAGE_FOLDERS[stage]
    if stage == "eval":
        folder = storage.baseline_dir(killed)  # eval of round 0 begins with the baseline
    proc = worker(config, stage, None, start_new_session=True)
    kill_when_a_shard_is_done(proc, folder)
    # the rerun's driver (for Ray a small local cluster of this process, shut down after); tasks the dead driver
    # started may still run their shards: the new tasks wait for those and find them done
    if executor == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_stage(killed, stage)  # a plain rerun under the same executor finishes what is left
    finally:
        if executor == "ray":
            ray.shutdown()
    assert stage_bytes(killed, stage) == stage_bytes(single, stage)
