"""Atomic writes, shard markers and locks: a reader never sees half a file, and two processes never write the same
stage of a round at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data.errors import DataError, DiskError, StageError

# What the disk can refuse, and what the user can do about it.
DISK_ERRORS = {
    errno.ENOSPC: "the disk is full: free space, then rerun the same command",
    errno.EDQUOT: "the disk quota is used up: free space, then rerun the same command",
    errno.EFBIG: "the file is larger than the file system allows: point experiment.output_root elsewhere",
    errno.EROFS: "the file system is read-only: point experiment.output_root at a writable folder",
    errno.EACCES: "permission denied: give this user the right to write there (or another experiment.output_root)",
    errno.EPERM: "not permitted (an immutable file? `chattr -i` it): fix it, then rerun the same command",
}


def disk_failure(error: OSError, path: Path | None = None) -> DiskError | None:
    """A refused write as a one-line DiskError naming the path and what to do; None for other OS errors."""
    if isinstance(error, DiskError):
        return error
    what = DISK_ERRORS.get(error.errno or 0)
    if what is None:
        return None
    where = error.filename or path or "a file"
    return DiskError(f"cannot write {where}: {what}")


@contextlib.contextmanager
def writing(tmp: Path, path: Path) -> Iterator[None]:
    """Write through `tmp`: on failure it is removed (a full disk keeps no half file), and a refused write is one
    DiskError line."""
    try:
        yield
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        failure = disk_failure(e, path)
        if failure is None:
            raise
        raise failure from None


def write_parquet(table: pa.Table, path: Path, schema: pa.Schema) -> None:
    """Write `table` cast to `schema` as `path.tmp`, fsync, then rename: readers see all of it or nothing."""
    make_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with writing(tmp, path):
        pq.write_table(table.select(schema.names).cast(schema), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    make_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with writing(tmp, path):
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


def remove_tree(path: Path) -> None:
    """Delete a folder (or file) if it is there; one that cannot be deleted is a StageError naming it."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as e:
        raise StageError(f"cannot delete {e.filename or path}: {e.strerror}; delete it by hand and rerun") from None


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
        failure = disk_failure(e, path)
        if failure is not None:
            raise failure from None
        raise StageError(f"cannot create the folder {path}: {e.strerror} (check experiment.output_root)") from None


def marker_path(shard_path: Path) -> Path:
    return shard_path.with_suffix(".done")


def shard_done(shard_path: Path) -> bool:
    return marker_path(shard_path).exists() and shard_path.exists()


def mark_done(shard_path: Path, n_rows: int) -> None:
    """The shard's marker: its row count and checksum, which the manifest and every later reader check."""
    write_json({"rows": n_rows, "sha256": file_sha256(shard_path), "finished": time.time()}, marker_path(shard_path))


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Any]:
    """A lock file opened for appending; a refusal is one DiskError line."""
    try:
        f = open(path, "a+")
    except OSError as e:
        raise (disk_failure(e, path) or e) from None
    with f:
        yield f


@contextlib.contextmanager
def stage_lock(rdir: Path, stage: str, wait: bool = False) -> Iterator[None]:
    """Refuse a second process on the same round and stage (`wait`: wait for the first to finish instead). The OS
    drops the lock when a process dies, even by -9."""
    make_dir(rdir)
    path = rdir / f".{stage}.lock"
    with opened(path) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StageError(f"{stage} is already running on {rdir} (held by pid {holder}); wait for it") from None
        with contextlib.suppress(OSError):  # who holds it, for the message above; a full disk must not stop us here
            os.ftruncate(f.fileno(), 0)
            os.pwrite(f.fileno(), str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
