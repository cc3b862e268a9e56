"""Manifests and the stage ritual. A stage folder is finished when its `manifest.json` exists (it is written last).
Sharded stages resume in place; single-output stages build in a hidden temporary folder and rename it into place.

Every manifest lists the files its stage published (`files`: size and SHA-256 of each), their `identity` (one
digest of that list: what the stage holds, whatever config made it), and its `inputs`: the identity of each stage
it was made from. A reader checks all three, so a round's artifacts say truthfully what they were made from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from raft_data.config import config_hash
from raft_data.errors import DataError, StageError
from raft_data.storage.files import (
    file_sha256,
    make_dir,
    marker_path,
    opened,
    read_json,
    remove_tree,
    stage_lock,
    write_json,
    write_text,
)
from raft_data.storage.layout import NEXT_COMMAND, STAGES, shard_files

# Files a stage folder holds that are not its content: the record of how it was made, markers, work in progress.
NOT_CONTENT = ("manifest.json", "raft_config.yaml")


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


# ---------------------------------------------------------------------------------------------------------------------
# What a folder holds: every published file with its size and checksum, and one identity for all of them.


def content_files(folder: Path) -> list[Path]:
    """The files a stage published in `folder` (any depth), without its manifest, config record, markers, locks
    and hidden or temporary files."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if str(rel) in NOT_CONTENT or path.suffix in (".done", ".tmp", ".lock"):
            continue
        out.append(path)
    return out


def inventory(folder: Path) -> dict[str, dict[str, Any]]:
    """Each published file's size and SHA-256 (a shard's from its marker, written when the shard was finished)."""
    out = {}
    for path in content_files(folder):
        marker = read_json(marker_path(path)) if marker_path(path).exists() else {}
        entry: dict[str, Any] = {"size": path.stat().st_size, "sha256": marker.get("sha256") or file_sha256(path)}
        if "rows" in marker:
            entry["rows"] = marker["rows"]
        out[str(path.relative_to(folder))] = entry
    return out


def identity(files: dict[str, dict[str, Any]]) -> str:
    """One digest of a folder's content: the sorted names and checksums of its files."""
    listing = sorted((name, entry["sha256"]) for name, entry in files.items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def verify_files(folder: Path, manifest: dict[str, Any], stage: str, round_idx: int, hashes: bool = True) -> None:
    """Check a finished stage's files against its manifest before anything reads them: none missing, none of
    another size or checksum (`hashes=False`: sizes only), no shard added. A DataError names the first file that
    differs and the command that rebuilds it."""
    rebuild = f"rerun `{NEXT_COMMAND.get(stage, stage)} --round {round_idx} --force`"
    listed = manifest.get("files")
    if listed is None:
        listed = manifest.get("shards")  # manifests written before every file was listed: their shards
    if listed is None:
        raise DataError(f"{folder / 'manifest.json'} lists no files (an unfinished or foreign manifest): {rebuild}")
    for name in sorted(listed):
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing (its manifest.json lists it): {rebuild}")
        size = listed[name].get("size")
        if size is not None and path.stat().st_size != size:
            raise DataError(f"{path} is damaged (its size is not the one in manifest.json): {rebuild}")
        if hashes and file_sha256(path) != listed[name]["sha256"]:
            raise DataError(f"{path} is damaged (its checksum is not the one in manifest.json): {rebuild}")
    extra = sorted({p.name for p in shard_files(folder)} - set(listed))
    if extra:
        raise DataError(f"{folder / extra[0]} is not listed in its manifest.json (another run's file?): {rebuild}")


def read_verified(folder: Path, stage: str, round_idx: int, hashes: bool = True) -> dict[str, Any]:
    """The manifest of a finished stage whose files are all there and unchanged."""
    manifest = read_manifest(folder, stage, round_idx)
    verify_files(folder, manifest, stage, round_idx, hashes)
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# The stage ritual.


@dataclass
class StageRun:
    """What a stage needs to know about its output folder before it starts."""

    folder: Path
    config: dict[str, Any]
    config_hash: str
    started: float
    done: bool  # a finished manifest with the same hash and the same inputs exists: nothing to do
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def manifest(self) -> dict[str, Any]:
        """The finished manifest (only when `done`)."""
        return read_json(self.folder / "manifest.json")


def saved_record(path: Path) -> dict[str, Any]:
    """A stage's `raft_config.yaml` (config hash, config, inputs), or {} when there is none."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise DataError(f"{path} is damaged (not valid YAML): delete it and rerun the stage") from None
    return data if isinstance(data, dict) else {}


def identities(inputs: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    return {label: ref.get("identity") for label, ref in (inputs or {}).items()}


def changed_inputs(old: dict[str, Any] | None, new: dict[str, dict[str, Any]]) -> list[str]:
    """The labels of inputs whose identity differs between a stage's record and now."""
    before, now = identities(old), identities(new)
    return sorted(label for label in set(before) | set(now) if before.get(label) != now.get(label))


def finished(folder: Path, config: dict[str, Any], inputs: dict[str, dict[str, Any]]) -> bool:
    """The stage in `folder` is done with this config from these inputs: a rerun would skip it."""
    path = folder / "manifest.json"
    if not path.exists():
        return False
    manifest = read_json(path)
    return manifest.get("config_hash") == config_hash(config) and not changed_inputs(manifest.get("inputs"), inputs)


def say_removed(stage: str, folder: Path, why: str) -> None:
    print(f"{stage}: {why}: deleted {folder}", flush=True)


def begin_stage(
    folder: Path,
    config: dict[str, Any],
    chash: str,
    force: bool,
    round_idx: int,
    in_place: bool = True,
    inputs: dict[str, dict[str, Any]] | None = None,
    stage: str = "stage",
) -> StageRun:
    """Check `folder` against this config and these inputs: skip it if done, refuse it if built by another config,
    rebuild it if built from other inputs (it is stale), else prepare it.

    Sharded stages (`in_place`) resume in `folder` itself; the resolved config is written first
    (`raft_config.yaml`) so that a relaunch with another config is refused once a shard is finished. A folder with
    no finished shard pins nothing: a first attempt that failed before writing a row never blocks the corrected
    rerun. Other stages build in `tmp_folder(folder)` and publish it whole, so `folder` exists only when finished;
    an unfinished build of the same config is kept (SFT resumes from its checkpoints), of another one removed.
    What is deleted is said, one line each.
    """
    inputs = inputs or {}
    manifest = folder / "manifest.json"
    saved = folder / "raft_config.yaml"
    if force:
        if manifest.exists():
            say_removed(stage, folder, "--force")
            built_on = dependants(folder)
            if built_on:
                names = ", ".join(str(p.relative_to(folder.parent.parent)) for p in built_on)
                print(
                    f"{stage}: {len(built_on)} stage(s) built on it ({names}) are stale if what it holds changes; "
                    "a plain rerun of each (or `raft-data rounds`) redoes exactly those",
                    flush=True,
                )
        remove_tree(folder)
        remove_tree(tmp_folder(folder))
    old: dict[str, Any] = {}
    if manifest.exists():
        old = read_json(manifest)
    elif in_place and any(folder.glob("*.done")):
        old = saved_record(saved)
    old_hash = old.get("config_hash")
    if old_hash is not None and old_hash != chash:
        where = f" (and --round {round_idx}), or set a new experiment.name" if round_idx >= 0 else ""
        raise StageError(
            f"{folder} was made with another config (hash {old_hash}, now {chash}); to start this stage over "
            f"and drop its old rows, rerun with --force{where}"
        )
    if old_hash is not None and changed_inputs(old.get("inputs"), inputs):
        what = "finished" if manifest.exists() else "unfinished"
        say_removed(
            stage,
            folder,
            f"its {what} output is stale ({', '.join(changed_inputs(old.get('inputs'), inputs))} "
            "changed since it was made); building it again",
        )
        remove_tree(folder)
    elif manifest.exists():
        return StageRun(folder, config, chash, time.time(), done=True, inputs=inputs)
    record = yaml.safe_dump({"config_hash": chash, "config": config, "inputs": inputs}, sort_keys=False)
    if in_place:
        make_dir(folder)
        write_text(record, saved)
    else:
        tmp = tmp_folder(folder)
        saved_tmp = saved_record(tmp / "raft_config.yaml")
        if saved_tmp.get("config_hash") != chash or changed_inputs(saved_tmp.get("inputs"), inputs):
            remove_tree(tmp)
        make_dir(tmp)
        write_text(record, tmp / "raft_config.yaml")
    return StageRun(folder, config, chash, time.time(), done=False, inputs=inputs)


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
    inputs: dict[str, dict[str, Any]] | None = None,
    neighbours: list[tuple[Path, str]] | None = None,
) -> Iterator[StageRun]:
    """The ritual every stage repeats, in one place: hold the stage's lock (`lock_dir`, default the folder's
    parent), refuse to start while a stage it reads from or that reads from it runs (`neighbours`), hash the
    stage's config, refuse a folder made with another one, rebuild a stale one, and skip a finished one.

        with stage("score", folder, stage_cfg, round_idx, force, inputs=inputs) as run:
            if run.done:
                return run.manifest
            ...  # build the output, then finish_stage(run, ...) writes the manifest last

    `owner=False` is for the other processes of a data-parallel run: they take no lock and write nothing, and
    their run is never `done` (they learn that from the owner's folder once it has begun).
    """
    if not owner:
        yield StageRun(folder, config, config_hash(config), time.time(), done=False, inputs=inputs or {})
        return
    lock_dir = lock_dir or folder.parent
    with stage_lock(lock_dir, name), running(lock_dir, name, neighbours or []):
        try:
            run = begin_stage(folder, config, config_hash(config), force, round_idx, in_place, inputs, name)
            if run.done:
                print(f"{name}: {folder} is done, skipping")
            yield run
        except OSError:
            if not in_place:  # a disk failure: what was half built must not hold the space or block the rerun
                remove_tree(tmp_folder(folder))
            raise


@contextlib.contextmanager
def running(rdir: Path, name: str, neighbours: list[tuple[Path, str]]) -> Iterator[None]:
    """Mark stage `name` of the round in `rdir` as running (a shared lock: shard workers of one stage run side by
    side), after checking that none of `neighbours` (round folder, stage) runs: a stage never reads a folder that
    is being rewritten, and a folder is never rewritten while a stage reads it. The OS drops the locks on exit."""
    import fcntl

    make_dir(rdir)
    with opened(rdir / f".{name}.running") as mine:
        fcntl.flock(mine.fileno(), fcntl.LOCK_SH)
        try:
            for other_dir, other in neighbours:
                path = other_dir / f".{other}.running"
                if not path.exists():
                    continue
                with open(path, "a+") as f:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise StageError(
                            f"{other} is running on {other_dir}, and {name} reads from it or writes what it reads: "
                            f"wait for it to finish, then rerun `{NEXT_COMMAND.get(name, name)}`"
                        ) from None
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            yield
        finally:
            fcntl.flock(mine.fileno(), fcntl.LOCK_UN)


def tmp_folder(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tmp")


def finish_stage(
    run: StageRun,
    stage: str,
    round_idx: int,
    inputs: dict[str, Any] | None = None,
    counts: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Write the manifest last: its presence means the stage is done. It lists every file of the folder (size,
    checksum) and their identity, and the inputs' identities the stage began with (`run.inputs`); `inputs` adds
    details about them that are not identities (paths, settings)."""
    where = folder or run.folder
    files = inventory(where)
    manifest = {
        "stage": stage,
        "round": round_idx,
        "config_hash": run.config_hash,
        "config": run.config,
        "inputs": run.inputs,
        "input_details": inputs or {},
        "counts": counts or {},
        **(extra or {}),
        "files": files,
        "identity": identity(files),
        "versions": library_versions(),
        "started": run.started,
        "wall_time_s": round(time.time() - run.started, 3),
    }
    write_json(manifest, where / "manifest.json")
    return manifest


def publish_folder(final: Path) -> None:
    """Move a finished temporary folder (manifest inside) into place in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp_folder(final), final)


# ---------------------------------------------------------------------------------------------------------------------
# Lineage: a stage's inputs are references to other stages' folders, by identity.


def manifest_identity(manifest: dict[str, Any]) -> str:
    """A finished stage's identity (for manifests written before identities were recorded: from their shards)."""
    if manifest.get("identity"):
        return manifest["identity"]
    listed = manifest.get("files") or manifest.get("shards")
    return identity(listed) if listed else str(manifest.get("config_hash"))


def input_ref(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """How a stage names one of its inputs: the input stage's folder, relative to the experiment, and its identity."""
    return {"stage": str(folder.relative_to(folder.parent.parent)), "identity": manifest_identity(manifest)}


def stage_folders(exp_dir: Path) -> list[Path]:
    """Every stage folder of an experiment that has a manifest, rounds in order, the baseline first."""
    order = {s.folder: i for i, s in enumerate(STAGES.values())}
    found = [p.parent for p in exp_dir.glob("*/*/manifest.json") if p.parent.name in order]
    return sorted(found, key=lambda p: (p.parent.name != "baseline", p.parent.name, order[p.name]))


def stale_reason(folder: Path, memo: dict[Path, str | None] | None = None) -> str | None:
    """Why a finished stage no longer matches what it was made from (an input changed, is gone, or is stale
    itself), in a few words; None when every input is as it was. Follows inputs up to the first round."""
    memo = {} if memo is None else memo
    if folder in memo:
        return memo[folder]
    memo[folder] = None
    exp_dir = folder.parent.parent
    manifest = read_json(folder / "manifest.json")
    why = None
    for label, ref in sorted((manifest.get("inputs") or {}).items()):
        if not isinstance(ref, dict) or "stage" not in ref:
            continue  # an input outside the experiment: the base model, a file
        upstream = exp_dir / ref["stage"]
        if not (upstream / "manifest.json").exists():
            why = f"its {label} {upstream} is gone or unfinished"
        elif manifest_identity(read_json(upstream / "manifest.json")) != ref["identity"]:
            why = f"its {label} {upstream} changed since it was made"
        elif stale_reason(upstream, memo) is not None:
            why = f"its {label} {upstream} is stale"
        if why:
            break
    memo[folder] = why
    return why


def dependants(folder: Path) -> list[Path]:
    """The finished stages of the experiment built on `folder`, directly or through others."""
    exp_dir = folder.parent.parent
    target = str(folder.relative_to(exp_dir))
    found: list[Path] = []
    names = {target}
    for other in stage_folders(exp_dir):  # inputs always come from earlier folders, so one pass in order finds all
        refs = (read_json(other / "manifest.json").get("inputs") or {}).values()
        if any(isinstance(r, dict) and r.get("stage") in names for r in refs):
            found.append(other)
            names.add(str(other.relative_to(exp_dir)))
    return found
