"""Executors: where the shards of a sharded stage run when not one after another in this process. Each runs the
stage's own `--shard i` path in another process (a Ray task, a Slurm array task through submitit), so shards,
locks, markers, seeds and bytes are those of a local run, and a round begun on one executor finishes on another.
(`executor.kind: ray_data` sends rows, not shards, through replicas that hold a model: storage/ray_data.py.)

    run_elsewhere(cfg.executor, partial(shard_task, cfg.to_dict(), round_idx), todo, "score round 0", exp_dir)

The process that submitted the shards then writes the manifest (a plain rerun does too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from raft_data.config import ExecutorConfig
from raft_data.errors import ConfigError, StageError


def last_line(error: BaseException) -> str:
    """The last non-empty line of an error from another process (its own one-line message, when it has one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def shard_task(stage: Callable[..., Any], cfg_data: dict[str, Any], round_idx: int | None, shard_idx: int) -> int:
    """What runs in another process: `stage(cfg, round_idx, shard=i)`, the stage's own `--shard i` path.
    `functools.partial(shard_task, score, cfg.to_dict(), round_idx)` is the task a stage hands to `run_elsewhere`."""
    from raft_data.config import config_from_dict
    from raft_data.storage.shards import WAIT_FOR_HELD_SHARDS

    WAIT_FOR_HELD_SHARDS["on"] = True  # this process runs executor tasks only
    stage(config_from_dict(cfg_data), round_idx, shard=shard_idx)
    return shard_idx


def call(task: Callable[[int], Any], shard: int) -> Any:
    """`task(shard)` in a worker: Ray takes plain functions, not partial ones."""
    return task(shard)


def ray_init(executor: ExecutorConfig) -> Any:
    """The `ray` module, connected to `executor.ray_address` (None: a local cluster) unless this process is already."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"executor.kind={executor.kind} needs Ray: pip install 'raft-toolkit[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=executor.ray_address, log_to_driver=False)
    return ray


def run_on_ray(executor: ExecutorConfig, task: Callable[[int], Any], ids: list[int], desc: str, gpus: int) -> None:
    """Each shard as one Ray task (1 CPU, `gpus` GPUs), retried twice if its worker dies."""
    ray = ray_init(executor)
    remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(call)
    pending = {remote.remote(task, i): i for i in ids}
    print(f"{desc}: {len(ids)} shards submitted to Ray")
    failed = []
    for _ in tqdm(range(len(ids)), desc=f"{desc} (ray)", unit="shard"):
        done, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(done[0])
        try:
            ray.get(done[0])
        except Exception as e:  # a failed shard; the others keep their markers for the rerun
            failed.append((shard, last_line(e)))
    if failed:
        shard, why = failed[0]
        raise StageError(f"{desc}: {len(failed)} shard(s) failed on Ray, the first (shard {shard}): {why}")


def run_on_slurm(
    executor: ExecutorConfig, task: Callable[[int], Any], ids: list[int], desc: str, gpus: int, logs: Path
) -> None:
    """The shards as one job array through submitit (`executor.submitit_cluster: local` runs the same tasks as
    local processes, without Slurm)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("executor.kind=slurm needs submitit: pip install 'raft-toolkit[slurm]'") from None
    ex = submitit.AutoExecutor(folder=str(logs), cluster=executor.submitit_cluster)
    params: dict[str, Any] = {
        "name": desc.replace(" ", "-"),
        "timeout_min": executor.slurm_time_min,
        "cpus_per_task": executor.slurm_cpus_per_task,
        "mem_gb": executor.slurm_mem_gb,
        "gpus_per_node": gpus,
        "slurm_array_parallelism": executor.slurm_parallelism,
    }
    if executor.slurm_partition:
        params["slurm_partition"] = executor.slurm_partition
    if executor.slurm_additional:
        params["slurm_additional_parameters"] = dict(executor.slurm_additional)
    if ex.cluster != "slurm":  # local and debug clusters take the generic parameters only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    ex.update_parameters(**params)
    jobs = ex.map_array(task, ids)
    print(f"{desc}: {len(ids)} shards submitted as job array {jobs[0].job_id.split('_')[0]} (logs in {logs})")
    failed = []
    for shard, job in tqdm(list(zip(ids, jobs, strict=True)), desc=f"{desc} (slurm)", unit="shard"):
        try:
            job.result()
        except Exception as e:
            failed.append((shard, last_line(e)))
    if failed:
        shard, why = failed[0]
        raise StageError(f"{desc}: {len(failed)} shard(s) failed in the job array, the first (shard {shard}): {why}")


def run_elsewhere(
    executor: ExecutorConfig, task: Callable[[int], Any], ids: list[int], desc: str, exp_dir: Path, gpus: int = 0
) -> None:
    """Run `task(i)` for each shard i of `ids` on the configured executor and wait for all (local: nothing to do
    here, the stage runs its shards itself). A failed shard is a StageError after every other shard finished.
    Under ray_data, a stage (or a reward) without a Ray Data path runs its shards as Ray tasks, as under ray."""
    if not ids or executor.kind == "local":
        return
    if executor.kind in ("ray", "ray_data"):
        run_on_ray(executor, task, ids, desc, gpus)
    else:
        run_on_slurm(executor, task, ids, desc, gpus, exp_dir / executor.slurm_logs)
