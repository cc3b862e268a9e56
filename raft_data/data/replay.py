"""Replay: human reference text mixed into a round's SFT data, so that fine-tuning on the policy's own best samples
keeps seeing the text the base model was fit to (`rounds.replay_fraction`).

Each replay row is a training-split prompt with the rest of its reference text (the prompts source column named by
`eval.reference_column`, e.g. the whole review) as the completion. Rows are drawn without replacement, seeded by
(experiment seed, round), from training-split prompts that the round did not draw; held-out prompts are never used.
The select stage writes them beside the selection (`selected/replay.parquet`) and `raft-sft train` adds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config
from raft_data.data.prompts import reference_texts, split_prompts
from raft_data.errors import ConfigError
from raft_data.storage import schemas

REPLAY_FILE = "replay.parquet"
REPLAY_SOURCE = "replay"
_REPLAY_STREAM = 1  # keeps the replay draw apart from the round's prompt draw, seeded by (seed, round) alone


def n_replay(fraction: float, n_selected: int) -> int:
    """replay_fraction x the selected rows, rounded half up."""
    return int(np.floor(fraction * n_selected + 0.5))


def replay_references(cfg: Config) -> dict[str, object]:
    """The reference texts replay draws from; replay needs eval.reference_column of the prompts source."""
    if cfg.eval.reference_file is not None:
        raise ConfigError(
            f"rounds.replay_fraction={cfg.rounds.replay_fraction!r} draws reference texts of training prompts, but "
            f"eval.reference_file={cfg.eval.reference_file!r} holds texts of no prompt: set eval.reference_column to "
            "a column of the prompts source instead"
        )
    if cfg.eval.reference_column is None:
        raise ConfigError(
            f"rounds.replay_fraction={cfg.rounds.replay_fraction!r} needs eval.reference_column: the column of the "
            "prompts source that holds the human reference text (e.g. the whole review)"
        )
    return reference_texts(cfg)


def replay_rows(cfg: Config, round_idx: int, n_selected: int, round_prompt_ids: set[str]) -> pa.Table:
    """The round's replay rows (schema `schemas.REPLAY`): `n_replay(fraction, n_selected)` training-split prompts
    outside `round_prompt_ids`, each completed by the rest of its reference text. Prompts whose reference does not
    start with the prompt, or adds nothing to it, are passed over; fewer rows come back when too few are left."""
    n = n_replay(cfg.rounds.replay_fraction, n_selected)
    refs = replay_references(cfg)
    train, _ = split_prompts(cfg.prompts)
    rows: dict[str, list] = {"prompt_id": [], "prompt": [], "completion": []}
    for pid, prompt in zip(train["prompt_id"].to_pylist(), train["prompt"].to_pylist(), strict=True):
        ref = refs.get(pid)
        if pid in round_prompt_ids or not isinstance(ref, str) or not ref.startswith(prompt):
            continue
        if ref[len(prompt) :].strip():
            rows["prompt_id"].append(pid)
            rows["prompt"].append(prompt)
            rows["completion"].append(ref[len(prompt) :])
    rng = np.random.default_rng([cfg.experiment.seed, round_idx, _REPLAY_STREAM])
    pick = np.sort(rng.permutation(len(rows["prompt_id"]))[:n]).tolist()
    return pa.table(
        {
            **{name: [values[i] for i in pick] for name, values in rows.items()},
            "truncated": [False] * len(pick),  # a whole human text: it ended by itself
            "source": [REPLAY_SOURCE] * len(pick),
            "round": [round_idx] * len(pick),
        },
        schema=schemas.REPLAY,
    )


def replay_settings(cfg: Config) -> dict[str, object]:
    """What the replay rows depend on, for the select stage's config hash; checks that replay can run."""
    if cfg.select.format != "prompt_completion":
        raise ConfigError(
            f"rounds.replay_fraction={cfg.rounds.replay_fraction!r} needs select.format=prompt_completion "
            f"(now {cfg.select.format}): replay rows are prompt/completion text"
        )
    if cfg.eval.reference_column is None or cfg.eval.reference_file is not None:
        replay_references(cfg)  # raises the ConfigError that names what is missing
    p = cfg.prompts
    return {
        "fraction": cfg.rounds.replay_fraction,
        "reference_column": cfg.eval.reference_column,
        "source": {"path": p.path, "split": p.split, "prompt_column": p.prompt_column, "id_column": p.id_column},
        "heldout_fraction": p.heldout_fraction,
        "seed": cfg.experiment.seed,
    }


def write_replay(cfg: Config, round_idx: int, n_selected: int, folder: Path) -> dict[str, object]:
    """Write the round's replay rows to `folder/replay.parquet`; returns the select manifest's `replay` entry."""
    drawn = pq.read_table(storage.round_dir(cfg, round_idx) / "prompts.parquet", columns=["prompt_id"])
    table = replay_rows(cfg, round_idx, n_selected, set(drawn["prompt_id"].to_pylist()))
    storage.write_parquet(table, folder / REPLAY_FILE, schemas.REPLAY)
    return {
        "file": REPLAY_FILE,
        "rows": table.num_rows,
        "wanted": n_replay(cfg.rounds.replay_fraction, n_selected),
        "sha256": storage.file_sha256(folder / REPLAY_FILE),
    }
