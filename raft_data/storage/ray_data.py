"""The shard engine's Ray Data path (`executor.kind: ray_data`): the rows of every unfinished shard of a stage go
through one Ray Data pipeline whose replicas each hold a loaded model (vLLM engines through `ray.data.llm`, or an
actor pool under `map_batches`), and come back as the stage's own shards, markers and manifest.

    run_dataset(run, "generate", rdir, cfg.executor, range(n), n, rows, transform, build, schemas.SAMPLES,
                OUT_SCHEMA, desc="generate round 0")

`rows(i)` is the work of shard i, one row per output row, keyed by (prompt_id, sample_idx); `transform(ds)` is the
pipeline, which keeps every input column and adds the columns of `out_schema`; `build(i, out)` turns the shard's
output rows (in any order) into the shard's table, the stage's own schema, as the local path writes it.

Resume, in two steps. A shard with a `.done` marker is never sent again. Rows of unfinished shards are kept as they
come back, as parts in `<stage folder>/.partial/<shard>/part-NNNNNN.parquet` (hidden: never content of the stage);
a rerun sends only the rows those parts do not hold (an anti-join on prompt_id and sample_idx). A shard is written
(`.tmp`, rename) once all its rows are in, then its marker, then its parts are deleted. Each unfinished shard is
held under its own lock for the whole pass, so a `--shard i` worker and this pass never share a shard.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raft_data.config import ExecutorConfig
from raft_data.errors import StageError, UserError
from raft_data.storage.executors import last_line, ray_init
from raft_data.storage.files import make_dir, shard_done, write_parquet
from raft_data.storage.layout import shard_name
from raft_data.storage.manifests import StageRun
from raft_data.storage.shards import check_failures, mark_shard, shard_lock, unfinished

KEY = ["prompt_id", "sample_idx"]
SHARD_COLUMN = "shard_idx"  # which shard an input row belongs to; the pipeline carries it through
PARTIAL = ".partial"


def user_error(error: BaseException) -> UserError | None:
    """The project's own error that failed a replica, if one did: Ray wraps it (with `raise_original_map_exception`,
    in a copy of its class whose message is the remote traceback); the plain one is further down the chain."""
    seen, stack = set(), [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError) and "Traceback" not in str(e) and "ray::" not in str(e):
            return e
        stack += [e.__context__, e.__cause__, getattr(e, "cause", None)]
    return None


def partial_dir(folder: Path, shard_idx: int, total: int) -> Path:
    return folder / PARTIAL / Path(shard_name(shard_idx, total)).stem


def read_parts(folder: Path, out_schema: pa.Schema) -> pa.Table:
    """The rows a shard's earlier passes brought back (none: an empty table)."""
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    return pa.concat_tables([out_schema.empty_table()] + [pq.read_table(p, schema=out_schema) for p in parts])


def row_keys(table: pa.Table) -> list[tuple[str, int]]:
    """(prompt_id, sample_idx) of every row, in order."""
    return list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))


def keys(table: pa.Table) -> set[tuple[str, int]]:
    return set(row_keys(table))


def first_of_each(table: pa.Table) -> pa.Table:
    """One row per (prompt_id, sample_idx), the first: a task Ray retried may have sent some rows twice."""
    seen: set[tuple[str, int]] = set()
    keep = []
    for j, key in enumerate(row_keys(table)):
        if key not in seen:
            seen.add(key)
            keep.append(j)
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


def pending_rows(work: pa.Table, done: pa.Table) -> pa.Table:
    """`work` without the rows `done` holds already: the anti-join on (prompt_id, sample_idx)."""
    if done.num_rows == 0:
        return work
    left = work.join(done.select(KEY).cast(work.select(KEY).schema), KEY, join_type="left anti")
    return left.select(work.column_names).cast(work.schema)


def run_dataset(
    run: StageRun,
    stage: str,
    rdir: Path,
    executor: ExecutorConfig,
    ids: list[int] | range,
    total: int,
    rows: Callable[[int], pa.Table],
    transform: Callable[[Any], Any],
    build: Callable[[int, pa.Table], tuple[pa.Table, dict[str, Any]]],
    schema: pa.Schema,
    out_schema: pa.Schema,
    desc: str,
    on_gpu: bool = False,
) -> None:
    """Run the unfinished shards of `ids` through one Ray Data pipeline and write each shard, then its marker, as
    soon as all its rows are back. A failed pipeline is a StageError; the shards it finished keep their markers and
    the rows it brought back stay in the parts, so a rerun sends only what is missing."""
    started = last = time.time()
    with contextlib.ExitStack() as held:
        todo = []
        for i in unfinished(run.folder, ids, total):
            try:
                held.enter_context(shard_lock(rdir, stage, i, total))
            except StageError:
                print(f"{stage}: shard {i} is running in another process, leaving it to that one")
                continue
            if not shard_done(run.folder / shard_name(i, total)):
                todo.append(i)

        def finish(i: int) -> None:
            nonlocal last
            out = first_of_each(read_parts(partial_dir(run.folder, i, total), out_schema))
            table, cost = build(i, out)
            path = run.folder / shard_name(i, total)
            cost["failed_rows"] = check_failures(table, stage, path, executor.max_failed_fraction)
            write_parquet(table, path, schema)
            now = time.time()
            # the seconds since the pass began or the last shard was written: the shards' sum is the pass's wall
            seconds = round(now - last, 3)
            last = now
            cost = {"wall_s": seconds, **({"gpu_s": seconds} if on_gpu else {}), **cost}
            mark_shard(path, table.num_rows, cost)
            shutil.rmtree(partial_dir(run.folder, i, total), ignore_errors=True)
            with contextlib.suppress(OSError):  # the last shard's parts gone: no work in progress is left
                (run.folder / PARTIAL).rmdir()

        expected: dict[int, set[tuple[str, int]]] = {}
        sends = []
        for i in todo:
            work = rows(i)
            done = read_parts(partial_dir(run.folder, i, total), out_schema)
            send = pending_rows(work, done)
            expected[i] = keys(send)
            if not expected[i]:
                finish(i)  # nothing left to send: every row is in the parts (or the shard has none)
                continue
            kept = f", {work.num_rows - send.num_rows} kept from an earlier pass" if done.num_rows else ""
            print(f"{desc}: shard {i}: {send.num_rows} rows to Ray Data{kept}")
            sends.append(send.append_column(SHARD_COLUMN, pa.array([i] * send.num_rows, pa.int32())))
        if not sends:
            return
        work = pa.concat_tables(sends)
        ray = ray_init(executor)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.DataContext.get_current().raise_original_map_exception = True
        size = executor.ray_data_batch_size
        # one block per batch, so that every replica gets work from the start
        blocks = [work.slice(start, size) for start in range(0, work.num_rows, size)]
        dataset = transform(ray.data.from_arrow(blocks))
        parts = {i: len(list(partial_dir(run.folder, i, total).glob("part-*.parquet"))) for i in expected}
        print(f"{desc}: {work.num_rows} rows of {len(expected)} shards through Ray Data")
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                for i in pc.unique(batch[SHARD_COLUMN]).to_pylist():
                    piece = batch.filter(pc.equal(batch[SHARD_COLUMN], i)).select(out_schema.names)
                    folder = partial_dir(run.folder, i, total)
                    make_dir(folder)
                    write_parquet(piece, folder / f"part-{parts[i]:06d}.parquet", out_schema)
                    parts[i] += 1
                    expected[i] -= keys(piece)
                    if not expected[i]:
                        finish(i)
        except StageError:
            raise
        except Exception as e:  # a failed replica; finished shards keep their markers, parts keep their rows
            own = user_error(e)
            if own is not None:  # bad input found in a replica: its own one line, as the local path says it
                first = str(own).strip().splitlines()[0]
                raise type(own)(f"{desc}: {first}") from e
            raise StageError(f"{desc}: Ray Data failed: {last_line(e)} (rerun to resume)") from e
        missing = sorted(i for i, left in expected.items() if left)
        if missing:
            raise StageError(f"{desc}: Ray Data returned no rows for part of shards {missing} (rerun to resume)")
        print(f"{desc}: {len(todo)} shards through Ray Data in {time.time() - started:.1f}s")


def actor_pool(replica: type, kwargs: dict[str, Any], executor: ExecutorConfig, gpus: int) -> Callable:
    """`ds -> ds` through `executor.ray_data_replicas` actors of class `replica` (each built once with `kwargs`),
    `executor.ray_data_batch_size` rows at a time, as Arrow tables."""

    def transform(dataset):
        import ray

        return dataset.map_batches(
            replica,
            fn_constructor_kwargs=kwargs,
            batch_format="pyarrow",
            batch_size=executor.ray_data_batch_size,
            compute=ray.data.ActorPoolStrategy(size=executor.ray_data_replicas),
            num_cpus=executor.ray_data_cpus_per_replica,
            num_gpus=gpus,
        )

    return transform
