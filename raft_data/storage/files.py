"""Atomic writes, shard markers and locks: a reader never sees half a file, and two processes never write the same
stage of a round at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data.errors import StageError


def write_parquet(table: pa.Table, path: Path, schema: pa.Schema) -> None:
    """Write `table` cast to `schema` as `path.tmp`, fsync, then rename: readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.select(schema.names).cast(schema), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", path)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def marker_path(shard_path: Path) -> Path:
    return shard_path.with_suffix(".done")


def shard_done(shard_path: Path) -> bool:
    return marker_path(shard_path).exists() and shard_path.exists()


def mark_done(shard_path: Path, n_rows: int) -> None:
    write_json({"rows": n_rows, "finished": time.time()}, marker_path(shard_path))


@contextlib.contextmanager
def stage_lock(rdir: Path, stage: str) -> Iterator[None]:
    """Refuse a second process on the same round and stage. The OS drops the lock when a process dies, even by -9."""
    rdir.mkdir(parents=True, exist_ok=True)
    path = rdir / f".{stage}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StageError(f"{stage} is already running on {rdir} (held by pid {holder}); wait for it") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
