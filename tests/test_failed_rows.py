"""A bad row does not kill a round: a sample the backend fails on, or a reward that raises on one sample, is written
with an `error` instead of stopping the stage, counted in the manifest and status, never selected or trained on,
redone alone by `--retry-failed`, and bounded by `executor.max_failed_fraction`. On the tiny model."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.errors import StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.tools.status import round_status
from raft_sft.train import train

from .conftest import make_config

BAD = "sequel"  # "This sequel is": one of the 8 drawn prompts


def rows(cfg, stage: str) -> list[dict]:
    folder = storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS[stage]
    return [r for f in storage.shard_files(folder) for r in pq.read_table(f).to_pylist()]


def shards(cfg, stage: str) -> dict[str, bytes]:
    folder = storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS[stage]
    return {p.name: p.read_bytes() for p in storage.shard_files(folder)}


def test_a_reward_that_raises_on_one_sample_costs_that_row_only(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    reward = {"reward": "tests.rewards_for_tests:fails_on_sequel"}
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, score=reward, executor={"max_failed_fraction": 0.5})
    generate(cfg, 0)
    monkeypatch.setenv("RAFT_TEST_SEQUEL_FAILS", "1")
    manifest = score(cfg, 0)
    assert manifest["counts"]["failed"] == 3
    failed = [r for r in rows(cfg, "score") if r["error"] is not None]
    assert len(failed) == 3 and all(r["reward"] is None and "cannot score sequels" in r["error"] for r in failed)
    bad_ids = {r["prompt_id"] for r in failed}
    chosen = select(cfg, 0)
    assert chosen["counts"]["failed"] == 3 and chosen["counts"]["selected"] == 7
    assert not bad_ids & {r["prompt_id"] for r in rows(cfg, "select")}  # never selected, never trained on
    train(cfg, 0)
    assert "failed 3" in "\n".join(round_status(cfg, 0))

    # --retry-failed with the fault gone: only the failed rows are scored again; the shards end as a clean run's
    monkeypatch.setenv("RAFT_TEST_SEQUEL_FAILS", "0")
    again = score(cfg, 0, retry_failed=True)
    assert "failed" not in again["counts"]
    clean = make_config(tmp_path / "clean", tiny_model_dir, prompts_file, score=reward)
    generate(clean, 0)
    score(clean, 0)
    assert shards(cfg, "score") == shards(clean, "score")
    assert storage.stale_reason(storage.round_dir(cfg, 0) / "selected") is not None  # built on the old scores


def test_too_many_failed_rows_stop_the_stage_and_keep_finished_shards(
    tmp_path, tiny_model_dir, prompts_file, monkeypatch
):
    cfg = make_config(
        tmp_path, tiny_model_dir, prompts_file, score={"reward": "tests.rewards_for_tests:fails_on_sequel"}
    )
    generate(cfg, 0)
    monkeypatch.setenv("RAFT_TEST_SEQUEL_FAILS", "1")
    with pytest.raises(StageError) as refused:
        score(cfg, 0)
    message = str(refused.value)
    assert "\n" not in message and "executor.max_failed_fraction=0.01" in message and "cannot score sequels" in message
    assert not (storage.round_dir(cfg, 0) / "scores" / "manifest.json").exists()
    monkeypatch.setenv("RAFT_TEST_SEQUEL_FAILS", "0")
    assert "failed" not in score(cfg, 0)["counts"]  # the corrected rerun finishes what is left


def test_a_prompt_the_backend_fails_on_costs_its_rows_only(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    real = BACKENDS["transformers"]
    broken = {"on": True}

    def flaky_backend(model_path, model_cfg, gen_cfg):
        sample = real(model_path, model_cfg, gen_cfg)

        def flaky(prompts, seed):
            if broken["on"] and any(BAD in p for p in prompts):
                raise RuntimeError("the engine failed on this input")
            return sample(prompts, seed)

        return flaky

    monkeypatch.setitem(BACKENDS, "transformers", flaky_backend)
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, executor={"max_failed_fraction": 0.5})
    manifest = generate(cfg, 0)
    assert manifest["counts"]["failed"] == 3 and manifest["counts"]["samples"] == 24
    failed = [r for r in rows(cfg, "generate") if r["error"] is not None]
    assert len(failed) == 3 and all(BAD in r["prompt"] and r["completion"] == "" for r in failed)
    assert all(r["error"] == "RuntimeError: the engine failed on this input" for r in failed)
    scored = score(cfg, 0)
    assert scored["counts"]["failed"] == 3  # a failed sample is not scored
    assert all(r["error"].startswith("no sample:") for r in rows(cfg, "score") if r["reward"] is None)
    assert select(cfg, 0)["counts"]["selected"] == 7

    broken["on"] = False
    again = generate(cfg, 0, retry_failed=True)
    assert "failed" not in again["counts"]
    assert all(r["error"] is None and r["n_tokens"] > 0 for r in rows(cfg, "generate"))
    assert "scores/    STALE" in "\n".join(round_status(cfg, 0))  # made from the samples before the retry
