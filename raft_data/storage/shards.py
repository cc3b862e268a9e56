"""The shard engine: how a sharded stage (generate, score, eval) runs its shards, in one place, so that no stage
handles a lock or a marker itself.

A sharded stage is a function of one shard: `build(i) -> pa.Table`. The engine runs the shards a process is given
(all of them, or `--shard i`), each under its own lock, skipping those with a `.done` marker, writing each as
`x.parquet.tmp`, fsync, rename, then the marker (rows, checksum, what it cost). Whoever finishes the last shard, or
a plain rerun, writes the manifest. Where the shards run is the executor's business (storage/executors.py); the
bytes are the same whatever the order, the process or the executor.

    with sharded_stage("score", folder, rdir, stage_cfg, round_idx, force, shard, inputs=..., neighbours=...) as run:
        if run.done:
            return run.manifest
        run_shards(run, "score", rdir, todo, total, build, schema, desc="score round 0")
        return finish_when_complete(run, "score", rdir, total, lambda: finish_stage(run, ...))
"""

from __future__ import annotations

import contextlib
import fcntl
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from raft_data.config import config_hash
from raft_data.errors import ConfigError, StageError
from raft_data.storage.files import (
    file_sha256,
    make_dir,
    marker_path,
    opened,
    read_json,
    shard_done,
    stage_lock,
    write_json,
    write_parquet,
)
from raft_data.storage.layout import shard_name
from raft_data.storage.manifests import StageRun, begin_stage, running


@contextlib.contextmanager
def setup_lock(rdir: Path, stage: str) -> Iterator[None]:
    """A short, waiting lock around the steps every worker of a stage shares: the stage check, the files every
    worker writes alike, and the manifest. Workers started together queue here for a moment instead of racing."""
    make_dir(rdir)
    with opened(rdir / f".{stage}.setup.lock") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# An executor's task waits for a shard that another process still runs (a task the dead driver of an earlier
# attempt started, say) and then finds it done; a worker a person started refuses it with one line instead.
WAIT_FOR_HELD_SHARDS = {"on": False}


def shard_lock(rdir: Path, stage: str, shard_idx: int, total: int) -> contextlib.AbstractContextManager:
    """One process per shard: the shard's own lock, so workers on other shards of the stage run beside it."""
    return stage_lock(rdir, f"{stage}.{Path(shard_name(shard_idx, total)).stem}", wait=WAIT_FOR_HELD_SHARDS["on"])


def check_shard_args(stage: str, shard: int | None, num_shards: int | None, total: int, force: bool, key: str) -> None:
    """`--shard i --num-shards n` against the stage's shard count, `key` (e.g. "generate.n_shards=4")."""
    if num_shards is not None and num_shards != total:
        raise ConfigError(
            f"--num-shards={num_shards} does not match {key}: the shard count of {stage} is part of its config; pass "
            f"--num-shards {total} to every worker"
        )
    if shard is not None and not 0 <= shard < total:
        raise ConfigError(f"--shard={shard} is invalid: expected 0..{total - 1} ({key})")
    if shard is not None and force:
        raise ConfigError("--force with --shard would delete the other shards' work: run --force without --shard")


@contextlib.contextmanager
def sharded_stage(
    stage: str,
    folder: Path,
    rdir: Path,
    config: dict[str, Any],
    round_idx: int,
    force: bool,
    shard: int | None,
    total: int,
    inputs: dict[str, dict[str, Any]] | None = None,
    neighbours: list[tuple[Path, str]] | None = None,
    setup: Callable[[StageRun], None] | None = None,
) -> Iterator[StageRun]:
    """Begin a sharded stage in this process: the stage's lock for a plain run, the one shard's lock for a
    `--shard` worker; the stage marked running (neighbours refused); the config and inputs checked under the setup
    lock (`setup(run)` then writes what every worker writes alike, e.g. the round's prompts)."""
    lock = stage_lock(rdir, stage) if shard is None else shard_lock(rdir, stage, shard, total)
    with lock, running(rdir, stage, neighbours or []):
        with setup_lock(rdir, stage):
            run = begin_stage(folder, config, config_hash(config), force, round_idx, True, inputs, stage)
            if run.done:
                print(f"{stage}: {folder} is done, skipping")
            elif setup is not None:
                setup(run)
        yield run


def unfinished(folder: Path, ids: list[int] | range, total: int) -> list[int]:
    return [i for i in ids if not shard_done(folder / shard_name(i, total))]


def usage_seconds() -> float:
    """CPU seconds this process and its finished children have used."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_shards(
    run: StageRun,
    stage: str,
    rdir: Path,
    ids: list[int] | range,
    total: int,
    build: Callable[[int], pa.Table | tuple[pa.Table, dict[str, Any]]],
    schema: pa.Schema,
    desc: str,
    on_gpu: bool = False,
    held: int | None = None,
    max_failed: float = 1.0,
) -> None:
    """Build and write each shard of `ids` that has no marker. A shard another process holds is left to it (`held`:
    the shard whose lock this process took already, a `--shard` worker's). `build` may return (table, cost) to add
    figures (tokens, say) to the shard's marker beside its wall and CPU seconds. Rows with an `error` (the backend
    or the reward failed on them) are written as such, unless they are more than `max_failed` of the shard: then the
    stage stops with one line and the shard is not written."""
    todo = unfinished(run.folder, ids, total)
    for i in tqdm(todo, desc=desc, unit="shard", disable=not todo):
        path = run.folder / shard_name(i, total)
        lock = contextlib.nullcontext() if i == held else shard_lock(rdir, stage, i, total)
        try:
            lock.__enter__()
        except StageError:
            print(f"{stage}: shard {i} is running in another process, leaving it to that one")
            continue
        try:
            if shard_done(path):
                continue
            wall, cpu = time.time(), usage_seconds()
            out = build(i)
            table, cost = out if isinstance(out, tuple) else (out, {})
            cost["failed_rows"] = check_failures(table, stage, path, max_failed)
            write_parquet(table, path, schema)
            seconds = round(time.time() - wall, 3)
            cost = {"wall_s": seconds, "cpu_s": round(usage_seconds() - cpu, 3), **cost}
            if on_gpu:
                cost["gpu_s"] = seconds
            mark_shard(path, table.num_rows, cost)
        finally:
            lock.__exit__(None, None, None)


def check_failures(table: pa.Table, stage: str, path: Path, max_failed: float) -> int:
    """How many rows of a shard failed (their `error` is set); more than `max_failed` of them is a StageError."""
    if "error" not in table.column_names or table.num_rows == 0:
        return 0
    errors = table["error"]
    n_failed = len(errors) - errors.null_count
    if n_failed > max_failed * table.num_rows:
        first = next(e for e in errors.to_pylist() if e is not None)
        raise StageError(
            f"{stage}: {n_failed} of {table.num_rows} rows of {path.name} failed, more than "
            f"executor.max_failed_fraction={max_failed:g} (the first: {first}); fix the cause and rerun (finished "
            "shards are kept), or raise the bound"
        )
    return n_failed


def failed_positions(path: Path) -> list[int]:
    """The rows of a finished shard whose `error` is set."""
    schema = pq.read_schema(path)
    if "error" not in schema.names:
        return []
    return [i for i, e in enumerate(pq.read_table(path, columns=["error"])["error"].to_pylist()) if e is not None]


def retry_failed(
    run: StageRun,
    stage: str,
    rdir: Path,
    ids: list[int] | range,
    total: int,
    redo: Callable[[int, pa.Table, list[int]], pa.Table],
    schema: pa.Schema,
    max_failed: float = 1.0,
) -> int:
    """`--retry-failed`: for each finished shard of `ids` with failed rows, `redo(i, table, positions)` returns the
    shard with those rows done again (the others as they were); the shard and its marker are rewritten. The
    manifest is removed first (it is written again once every shard is done), so a reader never sees a manifest
    that does not list the shard's new checksum. Returns how many rows were retried."""
    todo = {i: failed_positions(run.folder / shard_name(i, total)) for i in ids}
    todo = {i: rows for i, rows in todo.items() if rows and shard_done(run.folder / shard_name(i, total))}
    if not todo:
        print(f"{stage}: no failed rows to retry in {run.folder}")
        return 0
    manifest = run.folder / "manifest.json"
    n_rows = sum(map(len, todo.values()))
    if manifest.exists():
        manifest.unlink()
        print(f"{stage}: retrying {n_rows} failed rows: removed {manifest}, written again when done")
    for i, rows in tqdm(todo.items(), desc=f"{stage} retry", unit="shard"):
        path = run.folder / shard_name(i, total)
        with shard_lock(rdir, stage, i, total):
            wall, cpu = time.time(), usage_seconds()
            table = redo(i, pq.read_table(path), rows)
            n_failed = check_failures(table, stage, path, max_failed)
            write_parquet(table, path, schema)
            cost = {"wall_s": round(time.time() - wall, 3), "cpu_s": round(usage_seconds() - cpu, 3)}
            old = (read_json(marker_path(path)).get("cost") or {}) if marker_path(path).exists() else {}
            merged = {k: round(old.get(k, 0) + v, 3) for k, v in cost.items()}
            mark_shard(path, table.num_rows, {**old, **merged, "failed_rows": n_failed})
    return n_rows


@contextlib.contextmanager
def stage_rewrite(stage: str, rdir: Path, neighbours: list[tuple[Path, str]] | None = None) -> Iterator[None]:
    """Hold a stage of a round to rewrite its finished shards in place (a top-up): the stage's lock, the stage marked
    running (neighbours refused) and the setup lock, so no worker of the stage starts meanwhile."""
    with stage_lock(rdir, stage), running(rdir, stage, neighbours or []), setup_lock(rdir, stage):
        yield


def rewrite_shards(
    run: StageRun,
    stage: str,
    rdir: Path,
    total: int,
    redo: Callable[[int, pa.Table], tuple[pa.Table | None, dict[str, Any]]],
    schema: pa.Schema,
    tag: dict[str, Any],
    desc: str,
    on_gpu: bool = False,
) -> list[dict[str, Any]]:
    """Rewrite every finished shard once: `redo(i, table)` returns the new table (None: the file stays as it is) and
    what it did (`info`). Each shard's marker records `tag` and `info` (under "rewrite"), so a rerun after a kill
    skips the shards already rewritten and does the others. The info is put in the marker before the file is
    replaced: a shard whose file was replaced but whose marker still holds the old checksum is only marked. Costs
    (seconds, tokens) are added to the marker's. Returns each shard's info, in order."""
    out = []
    for i in tqdm(range(total), desc=desc, unit="shard"):
        path = run.folder / shard_name(i, total)
        marker = read_json(marker_path(path))
        done = marker.get("rewrite") or {}
        if {k: done.get(k) for k in tag} == tag and "info" in done:
            out.append(done["info"])
            continue
        pending = marker.get("pending")
        if pending is not None and {k: pending.get(k) for k in tag} == tag and file_sha256(path) != marker["sha256"]:
            # killed after the file was replaced: the file is the rewritten one, its info was kept beforehand
            marker = {**marker, "sha256": file_sha256(path), "rows": pq.read_metadata(path).num_rows}
            info, cost = pending["info"], {}
        else:
            wall, cpu = time.time(), usage_seconds()
            table, info = redo(i, pq.read_table(path))
            cost = {"wall_s": round(time.time() - wall, 3), "cpu_s": round(usage_seconds() - cpu, 3)}
            cost |= {k: v for k, v in info.items() if k.endswith("_tokens")}
            if on_gpu:
                cost["gpu_s"] = cost["wall_s"]
            if table is not None:
                info = {**info, "failed_rows": check_failures(table, stage, path, 1.0)}
                write_json({**marker, "pending": {**tag, "info": info}}, marker_path(path))
                write_parquet(table, path, schema)
                marker = {**marker, "sha256": file_sha256(path), "rows": table.num_rows}
        old = marker.get("cost") or {}
        merged = {k: round(old.get(k, 0) + v, 3) for k, v in cost.items()}
        if "failed_rows" in info:  # what the rows hold now, not a sum
            merged["failed_rows"] = info["failed_rows"]
        marker = {k: v for k, v in marker.items() if k != "pending"}
        rewrite = {**tag, "info": info, "cost": cost}  # what this rewrite cost alone (`cost` holds the sums)
        write_json({**marker, "cost": {**old, **merged}, "rewrite": rewrite}, marker_path(path))
        out.append(info)
    return out


def replace_rows(table: pa.Table, positions: list[int], new: pa.Table) -> pa.Table:
    """`table` with its rows at `positions` replaced by the rows of `new`, in order (same columns)."""
    data = table.to_pydict()
    fresh = new.select(table.column_names).to_pydict()
    for j, i in enumerate(positions):
        for name in table.column_names:
            data[name][i] = fresh[name][j]
    return pa.table(data, schema=table.schema)


def mark_shard(path: Path, n_rows: int, cost: dict[str, Any]) -> None:
    """The shard's marker: rows, checksum and cost, which the manifest and every later reader use."""
    marker = {"rows": n_rows, "sha256": file_sha256(path), "finished": time.time(), "cost": cost}
    write_json(marker, marker_path(path))


def shard_costs(folder: Path) -> dict[str, float]:
    """The shards' costs summed from their markers: wall, CPU and GPU seconds (in whichever processes ran them),
    tokens and any other figure the stage recorded."""
    total: dict[str, float] = {}
    for marker in sorted(folder.glob("shard-*.done")):
        for key, value in (read_json(marker).get("cost") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = round(total.get(key, 0) + value, 3)
    return total


def failed_count(cost: dict[str, Any]) -> dict[str, int]:
    """{"failed": rows} for a stage's counts where rows failed (summed from its shards' markers), else nothing."""
    failed = int(cost.get("failed_rows", 0))
    return {"failed": failed} if failed else {}


def finish_when_complete(run: StageRun, stage: str, rdir: Path, total: int, finish: Callable[[], dict]) -> dict | None:
    """Write the manifest when every shard is done (`finish()`, under the setup lock); else say how many are done
    and return None: the process that finishes the last shard, or a plain rerun, writes it."""
    with setup_lock(rdir, stage):
        if (run.folder / "manifest.json").exists():
            return read_json(run.folder / "manifest.json")
        pending = unfinished(run.folder, range(total), total)
        if pending:
            print(f"{stage}: {total - len(pending)}/{total} shards done; the last one writes the manifest")
            return None
        return finish()
