"""Manifests and the stage ritual. A stage folder is finished when its `manifest.json` exists (it is written last).
Sharded stages resume in place; single-output stages build in a hidden temporary folder and rename it into place.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from raft_data.config import config_hash
from raft_data.errors import DataError, StageError
from raft_data.storage.files import (
    file_sha256,
    make_dir,
    marker_path,
    read_json,
    stage_lock,
    write_json,
    write_text,
)
from raft_data.storage.layout import NEXT_COMMAND, shard_files


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("raft-toolkit", "torch", "transformers", "trl", "datasets", "pyarrow", "duckdb", "vllm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def read_manifest(folder: Path, stage: str, round_idx: int) -> dict[str, Any]:
    """The manifest of a finished stage, or a StageError that says which command makes it."""
    path = folder / "manifest.json"
    if not path.exists():
        raise StageError(f"{folder} is missing or unfinished: run `{NEXT_COMMAND[stage]} --round {round_idx}` first")
    return read_json(path)


@dataclass
class StageRun:
    """What a stage needs to know about its output folder before it starts."""

    folder: Path
    config: dict[str, Any]
    config_hash: str
    started: float
    done: bool  # a finished manifest with the same hash exists: nothing to do

    @property
    def manifest(self) -> dict[str, Any]:
        """The finished manifest (only when `done`)."""
        return read_json(self.folder / "manifest.json")


def saved_config_hash(path: Path) -> str | None:
    """The config hash in a stage's `raft_config.yaml`, or None when there is none."""
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise DataError(f"{path} is damaged (not valid YAML): delete it and rerun the stage") from None
    return data.get("config_hash") if isinstance(data, dict) else None


def begin_stage(
    folder: Path, config: dict[str, Any], chash: str, force: bool, round_idx: int, in_place: bool = True
) -> StageRun:
    """Check `folder` against this config: skip it if done, refuse it if built by another config, else prepare it.

    Sharded stages (`in_place`) resume in `folder` itself; the resolved config is written first
    (`raft_config.yaml`) so that a relaunch with another config is refused once a shard is finished. A folder with
    no finished shard pins nothing: a first attempt that failed before writing a row never blocks the corrected
    rerun. Other stages build in `tmp_folder(folder)` and publish it whole, so `folder` exists only when finished;
    an unfinished build of the same config is kept (SFT resumes from its checkpoints), of another one removed.
    """
    manifest = folder / "manifest.json"
    saved = folder / "raft_config.yaml"
    if force:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(tmp_folder(folder), ignore_errors=True)
    old_hash = None
    if manifest.exists():
        old_hash = read_json(manifest).get("config_hash")
    elif in_place and any(folder.glob("*.done")):
        old_hash = saved_config_hash(saved)
    if old_hash is not None and old_hash != chash:
        where = f" (and --round {round_idx}), or set a new experiment.name" if round_idx >= 0 else ""
        raise StageError(
            f"{folder} was made with another config (hash {old_hash}, now {chash}); to start this stage over "
            f"and drop its old rows, rerun with --force{where}"
        )
    if manifest.exists():
        return StageRun(folder, config, chash, time.time(), done=True)
    record = yaml.safe_dump({"config_hash": chash, "config": config}, sort_keys=False)
    if in_place:
        make_dir(folder)
        write_text(record, saved)
    else:
        tmp = tmp_folder(folder)
        if saved_config_hash(tmp / "raft_config.yaml") != chash:
            shutil.rmtree(tmp, ignore_errors=True)
        make_dir(tmp)
        write_text(record, tmp / "raft_config.yaml")
    return StageRun(folder, config, chash, time.time(), done=False)


@contextlib.contextmanager
def stage(
    name: str,
    folder: Path,
    config: dict[str, Any],
    round_idx: int,
    force: bool = False,
    in_place: bool = True,
    lock_dir: Path | None = None,
    owner: bool = True,
) -> Iterator[StageRun]:
    """The ritual every stage repeats, in one place: hold the stage's lock (`lock_dir`, default the folder's
    parent), hash the stage's config, refuse a folder made with another one, and skip a finished one.

        with stage("score", folder, stage_cfg, round_idx, force) as run:
            if run.done:
                return run.manifest
            ...  # build the output, then finish_stage(run, ...) writes the manifest last

    `owner=False` is for the other processes of a data-parallel run: they take no lock and write nothing, and
    their run is never `done` (they learn that from the owner's folder once it has begun).
    """
    if not owner:
        yield StageRun(folder, config, config_hash(config), time.time(), done=False)
        return
    with stage_lock(lock_dir or folder.parent, name):
        run = begin_stage(folder, config, config_hash(config), force, round_idx, in_place)
        if run.done:
            print(f"{name}: {folder} is done, skipping")
        yield run


def tmp_folder(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tmp")


def finish_stage(
    run: StageRun,
    stage: str,
    round_idx: int,
    inputs: dict[str, str],
    counts: dict[str, Any],
    extra: dict[str, Any] | None = None,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Write the manifest last: its presence means the stage is done."""
    manifest = {
        "stage": stage,
        "round": round_idx,
        "config_hash": run.config_hash,
        "config": run.config,
        "inputs": inputs,
        "counts": counts,
        **(extra or {}),
        "versions": library_versions(),
        "started": run.started,
        "wall_time_s": round(time.time() - run.started, 3),
    }
    write_json(manifest, (folder or run.folder) / "manifest.json")
    return manifest


def shard_inventory(folder: Path) -> dict[str, dict[str, Any]]:
    """Each shard's rows and checksum, for the manifest: from its marker, or read from the file when it has none."""
    out = {}
    for path in shard_files(folder):
        marker = read_json(marker_path(path)) if marker_path(path).exists() else {}
        rows = marker.get("rows")
        out[path.name] = {
            "rows": rows if rows is not None else pq.read_metadata(path).num_rows,
            "sha256": marker.get("sha256") or file_sha256(path),
        }
    return out


def verify_shards(folder: Path, manifest: dict[str, Any], stage: str, round_idx: int) -> None:
    """Check a finished stage's shards against its manifest before anything reads them: none missing, none added,
    none changed. A DataError names the first file that differs and the command that rebuilds it."""
    rebuild = f"rerun `{NEXT_COMMAND.get(stage, stage)} --round {round_idx} --force`"
    files = {p.name for p in shard_files(folder)}
    listed = manifest.get("shards")
    if listed is None:  # a manifest from before shards were listed: their number at least
        expected = (manifest.get("counts") or {}).get("shards")
        if expected is not None and expected != len(files):
            raise DataError(f"{folder} holds {len(files)} shards, its manifest.json {expected}: {rebuild}")
        return
    for name in sorted(listed):
        path = folder / name
        if name not in files:
            raise DataError(f"{path} is missing (its manifest.json lists it): {rebuild}")
        if file_sha256(path) != listed[name]["sha256"]:
            raise DataError(f"{path} is damaged (its checksum is not the one in manifest.json): {rebuild}")
    extra = sorted(files - set(listed))
    if extra:
        raise DataError(f"{folder / extra[0]} is not listed in its manifest.json (another run's file?): {rebuild}")


def read_verified(folder: Path, stage: str, round_idx: int) -> dict[str, Any]:
    """The manifest of a finished stage whose shards are all there and unchanged."""
    manifest = read_manifest(folder, stage, round_idx)
    verify_shards(folder, manifest, stage, round_idx)
    return manifest


def publish_folder(final: Path) -> None:
    """Move a finished temporary folder (manifest inside) into place in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp_folder(final), final)
