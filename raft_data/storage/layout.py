"""Names and paths of an experiment's artifacts: `<output_root>/<experiment>/round-NNNN/{prompts.parquet, samples,
scores, selected, model, eval}`, the baseline's eval folder, shard names, and the one table of stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raft_data.config import Config


@dataclass(frozen=True)
class StageInfo:
    """One stage of a round: its output folder, the command that makes it, the stages of the same round it reads
    (and `reads_previous`: the previous round's stages it reads, the model it samples from or starts from), and
    whether it works in shards that several processes can share."""

    name: str
    folder: str
    command: str
    reads: tuple[str, ...] = ()
    reads_previous: tuple[str, ...] = ()
    sharded: bool = False


# The one list of stages, in the order a round runs them. A new stage is one line here and its module in stages/.
STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in (
        StageInfo("generate", "samples", "raft-data generate", reads_previous=("train",), sharded=True),
        StageInfo("score", "scores", "raft-data score", reads=("generate",), reads_previous=("train",), sharded=True),
        StageInfo("select", "selected", "raft-data select", reads=("generate", "score")),
        StageInfo("train", "model", "raft-sft train", reads=("select",), reads_previous=("train",)),
        StageInfo("eval", "eval", "raft-data eval", reads=("train", "select", "score"), sharded=True),
    )
}
STAGE_FOLDERS = {name: s.folder for name, s in STAGES.items()}
NEXT_COMMAND = {name: s.command for name, s in STAGES.items()}


def experiment_dir(cfg: Config) -> Path:
    return Path(cfg.experiment.output_root) / cfg.experiment.name


def round_dir(cfg: Config, round_idx: int) -> Path:
    return experiment_dir(cfg) / f"round-{round_idx:04d}"


def rounds_with(cfg: Config, stage: str) -> list[int]:
    """The rounds, in order, whose `stage` has written its manifest."""
    found = []
    for rdir in sorted(experiment_dir(cfg).glob("round-[0-9][0-9][0-9][0-9]")):
        if (rdir / STAGE_FOLDERS[stage] / "manifest.json").exists():
            found.append(int(rdir.name.split("-")[1]))
    return found


def shard_name(shard_idx: int, n_shards: int) -> str:
    return f"shard-{shard_idx:05d}-of-{n_shards:05d}.parquet"


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*-of-*.parquet"))


def baseline_dir(cfg: Config) -> Path:
    """Where the base model's evaluation lives: the baseline row of every comparison."""
    return experiment_dir(cfg) / "baseline" / STAGE_FOLDERS["eval"]
