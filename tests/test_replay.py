"""Replay (`rounds.replay_fraction`): human reference text of training-split prompts added to a round's SFT data,
written by the select stage beside the selection and counted by `raft-sft train`. On the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.config import Config
from raft_data.data.prompts import split_prompts
from raft_data.data.replay import replay_rows
from raft_data.errors import ConfigError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.storage import schemas
from raft_sft.train import train

from .conftest import REVIEW_OPENINGS, make_config

ENDING = " a film I will remember."


def replay_config(tmp_path: Path, model_dir: Path, fraction: float, reference_column: str | None = "text") -> Config:
    prompts = tmp_path / "reviews.jsonl"
    with open(prompts, "w", encoding="utf-8") as f:
        for i, text in enumerate(REVIEW_OPENINGS):
            f.write(json.dumps({"id": f"p{i:03d}", "prompt": text, "text": text + ENDING}) + "\n")
    return make_config(
        tmp_path,
        model_dir,
        prompts,
        prompts={"heldout_fraction": 0.3, "n_prompts": 4},
        generate={"n_samples": 2, "n_shards": 2},
        eval={"reference_column": reference_column},
        rounds={"replay_fraction": fraction},
    )


def test_replay_rows_come_only_from_training_prompts_the_round_did_not_draw(tmp_path, tiny_model_dir) -> None:
    cfg = replay_config(tmp_path, tiny_model_dir, fraction=100.0)  # more than there are: every candidate
    train_pool, heldout = split_prompts(cfg.prompts)
    assert heldout.num_rows >= 1
    drawn = set(train_pool["prompt_id"].to_pylist()[:2])
    rows = replay_rows(cfg, 0, 4, drawn).to_pylist()
    assert {r["prompt_id"] for r in rows} == set(train_pool["prompt_id"].to_pylist()) - drawn
    for r in rows:
        assert r["completion"] == ENDING and r["prompt"] + r["completion"] in (o + ENDING for o in REVIEW_OPENINGS)
        assert r["truncated"] is False and r["source"] == "replay" and r["round"] == 0

    cfg.rounds.replay_fraction = 0.5
    again = replay_rows(cfg, 3, 4, drawn)
    assert again.num_rows == 2 and again.equals(replay_rows(cfg, 3, 4, drawn))  # seeded by (seed, round)


def test_replay_rows_are_added_to_the_sft_data_and_counted(tmp_path, tiny_model_dir) -> None:
    cfg = replay_config(tmp_path, tiny_model_dir, fraction=0.5)
    generate(cfg, 0)
    score(cfg, 0)
    selected = select(cfg, 0)
    n_selected = selected["counts"]["selected"]
    assert selected["replay"]["rows"] == selected["replay"]["wanted"] == round(0.5 * n_selected) >= 1

    folder = storage.round_dir(cfg, 0) / "selected"
    replay = pq.read_table(folder / "replay.parquet")
    assert replay.schema.equals(schemas.REPLAY)
    _, heldout = split_prompts(cfg.prompts)
    drawn = pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet")["prompt_id"].to_pylist()
    ids = set(replay["prompt_id"].to_pylist())
    assert not ids & set(heldout["prompt_id"].to_pylist()) and not ids & set(drawn)

    manifest = train(cfg, 0, record_examples=True)
    assert manifest["counts"]["replay"] == replay.num_rows
    assert manifest["counts"]["examples"] == n_selected + replay.num_rows
    seen = json.loads((storage.round_dir(cfg, 0) / "model" / "examples" / "rank-00000.json").read_text())
    assert {e for e in seen["example_ids"] if ":replay:" in e} == {f"0000:replay:{p}" for p in ids}


def test_replay_needs_a_reference_column(tmp_path, tiny_model_dir) -> None:
    cfg = replay_config(tmp_path, tiny_model_dir, fraction=0.5, reference_column=None)
    with pytest.raises(ConfigError, match=r"rounds.replay_fraction=0.5 needs eval.reference_column"):
        select(cfg, 0)
