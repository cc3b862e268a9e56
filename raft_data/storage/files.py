"""Atomic writes, shard markers and locks: a reader never sees half a file, and two processes never write the same
stage of a round at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data.errors import DataError, StageError


def write_parquet(table: pa.Table, path: Path, schema: pa.Schema) -> None:
    """Write `table` cast to `schema` as `path.tmp`, fsync, then rename: readers see all of it or nothing."""
    make_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.select(schema.names).cast(schema), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    make_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file this project wrote; a damaged one is a DataError that names it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is damaged (not valid JSON): delete its stage folder and rerun the stage") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is damaged (not a JSON object): delete its stage folder and rerun the stage")
    return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_dir(path: Path) -> None:
    """mkdir -p, with a one-line error when the path cannot be a folder (under a file, a missing mount, no rights)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StageError(f"cannot create the folder {path}: {e.strerror} (check experiment.output_root)") from None


def marker_path(shard_path: Path) -> Path:
    return shard_path.with_suffix(".done")


def shard_done(shard_path: Path) -> bool:
    return marker_path(shard_path).exists() and shard_path.exists()


def mark_done(shard_path: Path, n_rows: int) -> None:
    """The shard's marker: its row count and checksum, which the manifest and every later reader check."""
    write_json({"rows": n_rows, "sha256": file_sha256(shard_path), "finished": time.time()}, marker_path(shard_path))


@contextlib.contextmanager
def stage_lock(rdir: Path, stage: str) -> Iterator[None]:
    """Refuse a second process on the same round and stage. The OS drops the lock when a process dies, even by -9."""
    make_dir(rdir)
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
