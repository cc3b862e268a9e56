"""Names and paths of an experiment's artifacts: `<output_root>/<experiment>/round-NNNN/{prompts.parquet, samples,
scores, selected, model, eval}`, the baseline's eval folder, and shard names.
"""

from __future__ import annotations

from pathlib import Path

from raft_data.config import Config

STAGE_FOLDERS = {"generate": "samples", "score": "scores", "select": "selected", "train": "model", "eval": "eval"}
NEXT_COMMAND = {
    "generate": "raft-data generate",
    "score": "raft-data score",
    "select": "raft-data select",
    "train": "raft-sft train",
    "eval": "raft-data eval",
}


def experiment_dir(cfg: Config) -> Path:
    return Path(cfg.experiment.output_root) / cfg.experiment.name


def round_dir(cfg: Config, round_idx: int) -> Path:
    return experiment_dir(cfg) / f"round-{round_idx:04d}"


def shard_name(shard_idx: int, n_shards: int) -> str:
    return f"shard-{shard_idx:05d}-of-{n_shards:05d}.parquet"


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*-of-*.parquet"))


def baseline_dir(cfg: Config) -> Path:
    """Where the base model's evaluation lives: the baseline row of every comparison."""
    return experiment_dir(cfg) / "baseline" / STAGE_FOLDERS["eval"]
