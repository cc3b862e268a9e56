"""What a stage reads from other stages, checked (its files as listed, its own inputs as they were), and what a
round reads from the rounds before it, and finished rounds read back: the model a round samples from or
fine-tunes (past rounds that drifted out of bounds, with `rounds.on_drift: rollback`), a round's wall time, a
finished eval.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data.config import Config
from raft_data.errors import StageError
from raft_data.storage.files import read_json
from raft_data.storage.layout import NEXT_COMMAND, STAGE_FOLDERS, STAGES, round_dir, shard_files
from raft_data.storage.manifests import input_ref, read_verified, stale_reason

# The drift guard: eval metrics and the `rounds` bound on each (None: no bound).
DRIFT_BOUNDS = {"kl_per_token": "max_kl_per_token", "ppl_ratio": "max_ppl_ratio"}


def drift(cfg: Config, metrics: dict[str, Any], round_idx: int) -> str | None:
    """The first drift bound a round's eval metrics cross, as one line; None when every set bound holds."""
    for metric, key in DRIFT_BOUNDS.items():
        bound = getattr(cfg.rounds, key)
        if bound is None:
            continue
        value = metrics.get(metric)
        if value is None:
            raise StageError(
                f"rounds.{key}={bound} is set, but the eval of round {round_idx} has no {metric} metric "
                f"(rerun `raft-data eval --round {round_idx} --force`, or unset rounds.{key})"
            )
        if not math.isfinite(value) or value > bound:
            return f"{metric} {value:.4g} > rounds.{key} {bound:g} in round {round_idx}"
    return None


def last_good_round(cfg: Config, round_idx: int) -> int | None:
    """The newest round <= round_idx whose eval is within the drift bounds (a round without an eval counts as
    within), or None when every one drifted: then the base model is the last good one."""
    for r in range(round_idx, -1, -1):
        path = round_dir(cfg, r) / STAGE_FOLDERS["eval"] / "manifest.json"
        if not path.exists() or drift(cfg, read_json(path).get("metrics") or {}, r) is None:
            return r
    return None


def read_input(cfg: Config, stage: str, round_idx: int, hashes: bool = True) -> tuple[dict[str, Any], dict]:
    """The manifest of a finished stage that another stage reads, and the reference to it that the reader records:
    its files checked against the manifest (`hashes=False`: sizes only), and the stage itself not stale. A stale
    input is a StageError that names the command that rebuilds it."""
    folder = round_dir(cfg, round_idx) / STAGE_FOLDERS[stage]
    manifest = read_verified(folder, stage, round_idx, hashes)
    why = stale_reason(folder)
    if why is not None:
        raise StageError(
            f"{folder} is stale ({why}): rerun `{NEXT_COMMAND[stage]} --round {round_idx}` to rebuild it first"
        )
    return manifest, input_ref(folder, manifest)


def neighbours(cfg: Config, stage: str, round_idx: int) -> list[tuple[Path, str]]:
    """The (round folder, stage) pairs that must not run while `stage` of round n runs: the stages it reads and the
    stages that read it, in its round and in the rounds before and after it."""
    out = []
    info = STAGES[stage]
    for other in STAGES.values():
        if other.name in info.reads or stage in other.reads:
            out.append((round_dir(cfg, round_idx), other.name))
        if other.name in info.reads_previous and round_idx > 0:
            out.append((round_dir(cfg, round_idx - 1), other.name))
        if stage in other.reads_previous:
            out.append((round_dir(cfg, round_idx + 1), other.name))
    return out


def policy_for_round(cfg: Config, round_idx: int, role: str = "generate") -> tuple[str, dict[str, Any]]:
    """The model that generates round n (`role="generate"`) or that round n's SFT starts from (`role="train"`).

    By default both are round n-1's `model/` (round 0: the base model). `rounds.mode=offline` makes every round
    generate from the base model; `rounds.sft_from=base` makes every round fine-tune the base model (ReST-EM).
    With `rounds.on_drift=rollback`, rounds whose eval crossed a drift bound are passed over: the model is the
    newest one within bounds (the base model when none is).
    Returns (path, reference): a round's model is checked (every file's size and checksum, and not stale) and
    referenced by its identity; the base model by its path.
    """
    use_base = {"generate": cfg.rounds.mode == "offline", "train": cfg.rounds.sft_from == "base"}[role]
    base = cfg.model.name_or_path, {"path": cfg.model.name_or_path, "identity": f"base:{cfg.model.name_or_path}"}
    if round_idx == 0 or use_base:
        return base
    prev_idx = last_good_round(cfg, round_idx - 1) if cfg.rounds.on_drift == "rollback" else round_idx - 1
    if prev_idx is None:
        return base
    _, ref = read_input(cfg, "train", prev_idx)
    return str(round_dir(cfg, prev_idx) / STAGE_FOLDERS["train"]), ref


def round_wall_time(cfg: Config, round_idx: int) -> float:
    """Seconds the round's stages took, summed from their manifests (time spent in earlier, resumed runs included)."""
    rdir = round_dir(cfg, round_idx)
    total = 0.0
    for folder in STAGE_FOLDERS.values():
        path = rdir / folder / "manifest.json"
        if path.exists():
            total += read_json(path).get("wall_time_s", 0.0)
    return total


def round_cost(cfg: Config, round_idx: int) -> dict[str, Any] | None:
    """What a round's selected samples cost, from its manifests: generated tokens and seconds of every stage (summed
    over the processes that ran their shards), the same per selected sample, and the acceptance rate (selected /
    samples, and by level where the prompts have levels). None before the round's selection is finished."""
    rdir = round_dir(cfg, round_idx)
    select_path = rdir / STAGE_FOLDERS["select"] / "manifest.json"
    if not select_path.exists():
        return None
    selected_manifest = read_json(select_path)
    counts = selected_manifest.get("counts") or {}
    selected, samples = counts.get("selected") or 0, counts.get("samples") or 0
    seconds, tokens = 0.0, None
    for stage, folder in STAGE_FOLDERS.items():
        path = rdir / folder / "manifest.json"
        if not path.exists():
            continue
        manifest = read_json(path)
        cost = manifest.get("cost") or {}
        seconds += cost.get("wall_s", manifest.get("wall_time_s", 0.0))
        if stage == "generate":
            tokens = cost.get("generated_tokens")
    out: dict[str, Any] = {"selected": selected, "samples": samples, "seconds": round(seconds, 3), "tokens": tokens}
    if selected:
        out["seconds_per_selected"] = seconds / selected
        out["tokens_per_selected"] = tokens / selected if tokens is not None else None
    out["acceptance"] = selected / samples if samples else None
    out["acceptance_by_level"] = selected_manifest.get("acceptance_by_level") or {}
    out["acceptance_by_task"] = selected_manifest.get("acceptance_by_task") or {}
    return out


def read_eval(folder: Path) -> tuple[dict[str, Any], pa.Table] | None:
    """(manifest, completions) of a finished eval folder, or None."""
    if not (folder / "manifest.json").exists():
        return None
    return read_json(folder / "manifest.json"), pa.concat_tables([pq.read_table(f) for f in shard_files(folder)])
