"""executor.kind=ray_data in the main environment: generate through a transformers actor pool and score through a
reward-model actor pool, on a local Ray cluster (`ray.init(num_cpus=2)`), writing the stages' own shards, markers
and manifests, and resuming by the markers and by the rows an earlier pass brought back.

Skipped where Ray Data is not installed; `make test` installs it (`.[ray]`). The vLLM engine processor is tested in
tests/test_ray_data_vllm.py, under `make test-vllm`.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.backends.ray_data import OUTPUT
from raft_data.errors import ConfigError
from raft_data.rewards.builtin import vader
from raft_data.rewards.hf import hf_reward
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.storage import schemas

from .conftest import REAL_MODEL, make_config, require_assets, tiny_llama_config

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

RAY_DATA = {"kind": "ray_data", "ray_data_replicas": 2, "ray_data_batch_size": 4}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama reward model (one logit) over the real tokenizer."""
    require_assets()
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(REAL_MODEL)
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def shard_rows(cfg, stage: str = "samples") -> list[list[dict]]:
    return [pq.read_table(f).to_pylist() for f in storage.shard_files(storage.round_dir(cfg, 0) / stage)]


def marker(cfg, stage: str, i: int) -> str:
    return (storage.round_dir(cfg, 0) / stage / f"shard-{i:05d}-of-00003.done").read_text()


def test_generate_score_select_on_ray_data_and_resume(
    tmp_path, tiny_model_dir, tiny_rm_dir, prompts_file, local_ray
) -> None:
    components = [{"name": "rm", "model": str(tiny_rm_dir)}, {"ref": "vader", "weight": 0.5}]
    sections = {"executor": RAY_DATA, "score": {"reward": components}}
    ref = make_config(tmp_path / "ref", tiny_model_dir, prompts_file, **sections)

    # an uninterrupted Ray Data run: the stage's shards, schema, markers and manifest
    manifest = generate(ref, 0)
    samples_dir = storage.round_dir(ref, 0) / "samples"
    assert manifest is not None and manifest["counts"]["samples"] == 8 * 3
    files = storage.shard_files(samples_dir)
    assert [f.name for f in files] == [f"shard-{i:05d}-of-00003.parquet" for i in range(3)]
    for f in files:
        assert pq.read_schema(f).equals(schemas.SAMPLES, check_metadata=False) and storage.shard_done(f)
    assert not (samples_dir / ".partial").exists()
    reference = shard_rows(ref)
    for rows in reference:  # prompt by prompt, K samples each, as a local shard holds them
        assert [r["sample_idx"] for r in rows] == [0, 1, 2] * (len(rows) // 3)
        assert all(1 <= r["n_tokens"] <= 8 and r["source"] == "policy" for r in rows)

    # the same round again, after a pass that died: shard 1 finished by a local worker, shard 0 half brought back
    again = make_config(tmp_path / "again", tiny_model_dir, prompts_file, **sections)
    local = make_config(tmp_path / "again", tiny_model_dir, prompts_file, score={"reward": components})
    generate(local, 0, shard=1)
    before = marker(again, "samples", 1)
    partial = storage.round_dir(again, 0) / "samples" / ".partial" / "shard-00000-of-00003"
    kept = pa.Table.from_pylist(reference[0][::2]).select(OUTPUT.names).cast(OUTPUT)
    kept = kept.set_column(2, "completion", pa.array([f"kept {i}" for i in range(kept.num_rows)]))
    storage.write_parquet(kept, partial / "part-000000.parquet", OUTPUT)

    manifest = generate(again, 0)
    assert manifest is not None and manifest["counts"]["samples"] == 8 * 3
    resumed = shard_rows(again)
    # shard 1 was not redone; the rows kept from the dead pass were not sent again; the rest are the reference rows
    assert marker(again, "samples", 1) == before and resumed[1] != reference[1]
    assert [r["completion"] for r in resumed[0][::2]] == [f"kept {i}" for i in range(kept.num_rows)]
    assert resumed[0][1::2] == reference[0][1::2]
    assert resumed[2] == reference[2]
    assert files[2].read_bytes() == storage.shard_files(storage.round_dir(again, 0) / "samples")[2].read_bytes()
    assert not partial.exists()
    assert generate(again, 0)["identity"] == manifest["identity"]  # a plain rerun finds every shard done

    # scores: shard 1 by a local worker first, the others through the reward-model actor pool
    score(ref, 0, shard=1)
    before = marker(ref, "scores", 1)
    manifest = score(ref, 0)
    assert manifest is not None and manifest["counts"]["scores"] == 8 * 3
    assert marker(ref, "scores", 1) == before
    scores_files = storage.shard_files(storage.round_dir(ref, 0) / "scores")
    schema = pq.read_schema(scores_files[1])  # the local worker's
    rm = hf_reward(str(tiny_rm_dir))
    for samples, f in zip(files, scores_files, strict=True):
        assert pq.read_schema(f).equals(schema) and storage.shard_done(f)
        s, x = pq.read_table(f).to_pydict(), pq.read_table(samples).to_pydict()
        assert (s["prompt_id"], s["sample_idx"]) == (x["prompt_id"], x["sample_idx"])
        assert s["rm"] == pytest.approx(rm(x["prompt"], x["completion"]), abs=1e-5)
        assert s["vader"] == vader(x["prompt"], x["completion"])
        assert s["reward"] == pytest.approx([a + 0.5 * b for a, b in zip(s["rm"], s["vader"], strict=True)])

    selected = select(ref, 0)
    assert selected["counts"]["selected"] == 8


def test_function_rewards_run_as_ray_tasks_and_a_replica_error_is_one_line(
    tmp_path, tiny_model_dir, tiny_rm_dir, prompts_file, local_ray
) -> None:
    """Without a reward model, score's shards run as Ray tasks (as under executor.kind=ray). A reward that fails
    inside a replica (the `correct` checker without gold answers) stops the stage with its own one-line message, as
    the local path says it, and leaves no shard behind."""
    generate(make_config(tmp_path, tiny_model_dir, prompts_file), 0)
    plain = make_config(tmp_path, tiny_model_dir, prompts_file, executor=RAY_DATA)
    assert score(plain, 0)["counts"]["scores"] == 8 * 3
    for samples, scores in zip(shard_rows(plain), shard_rows(plain, "scores"), strict=True):
        texts = [(r["prompt"], r["completion"]) for r in samples]
        assert [r["vader"] for r in scores] == vader([p for p, _ in texts], [c for _, c in texts])

    components = [{"name": "rm", "model": str(tiny_rm_dir)}, {"ref": "correct"}]
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, executor=RAY_DATA, score={"reward": components})
    with pytest.raises(ConfigError) as e:
        score(cfg, 0, force=True)
    assert "\n" not in str(e.value) and "set prompts.answer_column" in str(e.value), str(e.value)
    assert not list((storage.round_dir(cfg, 0) / "scores").glob("shard-*"))
