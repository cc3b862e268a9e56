"""What a round reads from the rounds before it, and finished rounds read back: the model a round samples from or
fine-tunes, a round's wall time, a finished eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data.config import Config
from raft_data.storage.files import read_json
from raft_data.storage.layout import STAGE_FOLDERS, round_dir
from raft_data.storage.manifests import read_manifest


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


def round_wall_time(cfg: Config, round_idx: int) -> float:
    """Seconds the round's stages took, summed from their manifests (time spent in earlier, resumed runs included)."""
    rdir = round_dir(cfg, round_idx)
    total = 0.0
    for folder in STAGE_FOLDERS.values():
        path = rdir / folder / "manifest.json"
        if path.exists():
            total += read_json(path).get("wall_time_s", 0.0)
    return total


def read_eval(folder: Path) -> tuple[dict[str, Any], pa.Table] | None:
    """(manifest, completions) of a finished eval folder, or None."""
    if not (folder / "manifest.json").exists():
        return None
    return read_json(folder / "manifest.json"), pq.read_table(folder / "completions.parquet")
