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

import yaml

from raft_data.config import config_hash
from raft_data.errors import StageError
from raft_data.storage.files import read_json, stage_lock, write_json, write_text
from raft_data.storage.layout import NEXT_COMMAND


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


def begin_stage(
    folder: Path, config: dict[str, Any], chash: str, force: bool, round_idx: int, in_place: bool = True
) -> StageRun:
    """Check `folder` against this config: skip it if done, refuse it if built by another config, else prepare it.

    Sharded stages (`in_place`) resume in `folder` itself; the resolved config is written first
    (`raft_config.yaml`) so that a relaunch with another config is refused even before the manifest exists.
    Other stages build in `tmp_folder(folder)` and publish it whole, so `folder` exists only when finished.
    """
    manifest = folder / "manifest.json"
    saved = folder / "raft_config.yaml"
    if force and folder.exists():
        shutil.rmtree(folder)
    old_hash = None
    if manifest.exists():
        old_hash = read_json(manifest).get("config_hash")
    elif saved.exists():
        old_hash = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("config_hash")
    if old_hash is not None and old_hash != chash:
        where = f" (and --round {round_idx}), or set a new experiment.name" if round_idx >= 0 else ""
        raise StageError(
            f"{folder} was made with another config (hash {old_hash}, now {chash}); to start this stage over "
            f"and drop its old rows, rerun with --force{where}"
        )
    if manifest.exists():
        return StageRun(folder, config, chash, time.time(), done=True)
    if in_place:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(yaml.safe_dump({"config_hash": chash, "config": config}, sort_keys=False), saved)
    else:
        shutil.rmtree(tmp_folder(folder), ignore_errors=True)
        tmp_folder(folder).mkdir(parents=True)
        write_text(
            yaml.safe_dump({"config_hash": chash, "config": config}, sort_keys=False),
            tmp_folder(folder) / "raft_config.yaml",
        )
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


def publish_folder(final: Path) -> None:
    """Move a finished temporary folder (manifest inside) into place in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp_folder(final), final)
