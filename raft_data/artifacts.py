"""Round folders, atomic writes, shard markers, manifests and locks: the rules every stage follows.

A round lives in `<output_root>/<experiment>/round-NNNN/` and holds one folder per artifact:
`prompts.parquet`, `samples/`, `scores/`, `selected/`, `model/`. A stage folder is finished when its `manifest.json`
exists (it is written last). Sharded stages write `shard-XXXXX-of-YYYYY.parquet` through a `.tmp` file and a
rename, then a `.done` marker; a rerun skips marked shards. Single-output stages build in a hidden temporary folder
and rename it into place, so a reader never sees half an artifact.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raft_data.config import Config

STAGE_FOLDERS = {"generate": "samples", "score": "scores", "select": "selected", "train": "model", "eval": "eval"}
NEXT_COMMAND = {
    "generate": "raft-data generate",
    "score": "raft-data score",
    "select": "raft-data select",
    "train": "raft-sft train",
    "eval": "raft-data eval",
}


class StageError(RuntimeError):
    """A stage cannot run as asked (missing input, other config, held lock); the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------------
# Names and paths


def experiment_dir(cfg: Config) -> Path:
    return Path(cfg.experiment.output_root) / cfg.experiment.name


def round_dir(cfg: Config, round_idx: int) -> Path:
    return experiment_dir(cfg) / f"round-{round_idx:04d}"


def shard_name(shard_idx: int, n_shards: int) -> str:
    return f"shard-{shard_idx:05d}-of-{n_shards:05d}.parquet"


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*-of-*.parquet"))


# ---------------------------------------------------------------------------------------------------------------------
# Atomic writes


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


# ---------------------------------------------------------------------------------------------------------------------
# Locks


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


# ---------------------------------------------------------------------------------------------------------------------
# Manifests and the stage guard


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
        raise StageError(
            f"{folder} was made with another config (hash {old_hash}, now {chash}); to start this stage over "
            f"and drop its old rows, rerun with --force (and --round {round_idx}), or set a new experiment.name"
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


def save_model_folder(model, tokenizer, dest: Path) -> None:
    """save_pretrained a model and its tokenizer into `dest.tmp`, then rename it to `dest` in one step."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def publish_folder(final: Path) -> None:
    """Move a finished temporary folder (manifest inside) into place in one rename."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp_folder(final), final)


def policy_for_round(cfg: Config, round_idx: int, role: str = "generate") -> tuple[str, str]:
    """The model that generates round n (`role="generate"`) or that round n's SFT starts from (`role="train"`).

    By default both are round n-1's `model/` (round 0: the base model). `rounds.mode=offline` makes every round
    generate from the base model; `rounds.sft_from=base` makes every round fine-tune the base model (ReST-EM).
    Returns (path, identity), the identity being the model manifest's hash (or the base path) for config hashes.
    """
    use_base = {"generate": cfg.rounds.mode == "offline", "train": cfg.rounds.sft_from == "base"}[role]
    if round_idx == 0 or use_base:
        return cfg.model.name_or_path, f"base:{cfg.model.name_or_path}"
    prev = round_dir(cfg, round_idx - 1) / STAGE_FOLDERS["train"]
    manifest = read_manifest(prev, "train", round_idx - 1)
    return str(prev), f"round-{round_idx - 1:04d}:{manifest['config_hash']}"
