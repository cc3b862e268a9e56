"""Each stage on the tiny model: what lands on disk, skipping, refusing, and the errors users hit."""

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.errors import ConfigError, DataError, ModelLoadError, StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.storage import schemas

from .conftest import make_config


def read_folder(folder: Path):
    return pq.read_table([str(p) for p in storage.shard_files(folder)])


def test_generate_writes_k_samples_per_prompt_in_shards(tiny_config) -> None:
    manifest = generate(tiny_config, 0)
    rdir = storage.round_dir(tiny_config, 0)
    files = storage.shard_files(rdir / "samples")
    assert [f.name for f in files] == [f"shard-0000{i}-of-00003.parquet" for i in range(3)]
    assert all(storage.marker_path(f).exists() for f in files)
    table = read_folder(rdir / "samples")
    assert table.schema.equals(schemas.SAMPLES, check_metadata=False)
    prompts = pq.read_table(rdir / "prompts.parquet")
    assert prompts.num_rows == 8 and table.num_rows == 8 * 3 == manifest["counts"]["samples"]
    rows = table.to_pylist()
    for pid in prompts["prompt_id"].to_pylist():
        assert sorted(r["sample_idx"] for r in rows if r["prompt_id"] == pid) == [0, 1, 2]
    assert all(1 <= r["n_tokens"] <= 8 for r in rows)
    assert all(r["truncated"] == (r["n_tokens"] == 8) or not r["truncated"] for r in rows)
    assert {r["round"] for r in rows} == {0} and {r["source"] for r in rows} == {"policy"}
    assert (rdir / "samples" / "manifest.json").exists() and (rdir / "samples" / "raft_config.yaml").exists()


def test_sampling_settings_reach_generate_exactly(tiny_config, monkeypatch) -> None:
    """transformers defaults top_k=50; with top_k=0 no top-k filter may be applied."""
    from transformers import GenerationMixin

    seen = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs["generation_config"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    generate(tiny_config, 0)
    gen_cfg = seen[0]
    assert gen_cfg.top_k == 0 and gen_cfg.top_p == 1.0 and gen_cfg.temperature == 1.0 and gen_cfg.do_sample
    assert gen_cfg.num_return_sequences == 3 and gen_cfg.max_new_tokens == 8


def test_same_seed_same_samples_and_finished_stage_is_skipped(tiny_config, tmp_path, tiny_model_dir, prompts_file):
    generate(tiny_config, 0)
    first = read_folder(storage.round_dir(tiny_config, 0) / "samples")
    mtime = storage.shard_files(storage.round_dir(tiny_config, 0) / "samples")[0].stat().st_mtime_ns
    generate(tiny_config, 0)  # done: skipped
    assert storage.shard_files(storage.round_dir(tiny_config, 0) / "samples")[0].stat().st_mtime_ns == mtime
    other = make_config(tmp_path / "other", tiny_model_dir, prompts_file)
    generate(other, 0)
    assert read_folder(storage.round_dir(other, 0) / "samples").equals(first)


def test_changed_config_is_refused_and_force_starts_over(tiny_config, tmp_path, tiny_model_dir, prompts_file):
    generate(tiny_config, 0)
    changed = make_config(tmp_path, tiny_model_dir, prompts_file, generate={"n_samples": 2})
    with pytest.raises(StageError, match="made with another config.*--force"):
        generate(changed, 0)
    generate(changed, 0, force=True)
    table = read_folder(storage.round_dir(changed, 0) / "samples")
    assert set(table["sample_idx"].to_pylist()) == {0, 1}  # old rows are gone, not mixed in


def test_a_second_process_on_the_same_stage_is_refused(tiny_config) -> None:
    rdir = storage.round_dir(tiny_config, 0)
    with storage.stage_lock(rdir, "generate"):
        with pytest.raises(StageError, match="already running"):
            generate(tiny_config, 0)


def test_missing_inputs_name_the_stage_to_run_first(tiny_config) -> None:
    with pytest.raises(StageError, match="run `raft-data generate --round 0` first"):
        score(tiny_config, 0)
    with pytest.raises(StageError, match="run `raft-data generate --round 0` first"):
        select(tiny_config, 0)
    with pytest.raises(StageError, match="run `raft-sft train --round 0` first"):
        generate(tiny_config, 1)  # round 1 samples from round 0's model


def test_model_path_that_is_not_a_model(tmp_path, prompts_file) -> None:
    (tmp_path / "empty").mkdir()
    cfg = make_config(tmp_path, tmp_path / "empty", prompts_file)
    with pytest.raises(ModelLoadError, match="is not a model folder"):
        generate(cfg, 0)
    assert not storage.shard_files(storage.round_dir(cfg, 0) / "samples")


def test_score_and_select_on_generated_samples(tiny_config) -> None:
    generate(tiny_config, 0)
    score(tiny_config, 0)
    rdir = storage.round_dir(tiny_config, 0)
    scores = read_folder(rdir / "scores")
    assert scores.column_names == ["prompt_id", "sample_idx", "reward", "vader", "error"]
    assert scores.num_rows == 24 and all(-1 <= r <= 1 for r in scores["reward"].to_pylist())
    manifest = select(tiny_config, 0)
    selected = read_folder(rdir / "selected")
    assert selected.num_rows == 8 == manifest["counts"]["selected"]
    samples = read_folder(rdir / "samples").to_pylist()
    rewards = {(r["prompt_id"], r["sample_idx"]): r["reward"] for r in scores.to_pylist()}
    for row in selected.to_pylist():
        mine = [
            (rewards[(s["prompt_id"], s["sample_idx"])], -s["sample_idx"])
            for s in samples
            if s["prompt_id"] == row["prompt_id"]
        ]
        assert (row["reward"], -row["sample_idx"]) == max(mine)


def test_unknown_reward_and_strategy(tiny_config, tmp_path, tiny_model_dir, prompts_file) -> None:
    generate(tiny_config, 0)
    bad = make_config(tmp_path, tiny_model_dir, prompts_file, score={"reward": "happiness"})
    with pytest.raises(ConfigError, match="score.reward='happiness' is unknown"):
        score(bad, 0)
    score(tiny_config, 0)
    bad = make_config(tmp_path, tiny_model_dir, prompts_file, select={"strategy": "best_of_all"})
    with pytest.raises(ConfigError, match="select.strategy='best_of_all' is unknown"):
        select(bad, 0)


def nan_reward(prompts: list[str], completions: list[str]) -> list[float]:
    return [math.nan if i == 5 else 0.0 for i in range(len(completions))]


def test_non_finite_reward_names_the_sample_and_publishes_nothing(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        score={"reward": "tests.test_stages:nan_reward"},
        generate={"n_shards": 1},
    )
    generate(cfg, 0)
    with pytest.raises(DataError, match=r"returned nan for prompt_id=p\d+ sample_idx=\d"):
        score(cfg, 0)
    scores_dir = storage.round_dir(cfg, 0) / "scores"
    assert not (scores_dir / "manifest.json").exists() and not storage.shard_files(scores_dir)
