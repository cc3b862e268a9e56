"""best_per_prompt equals a brute-force argmax (ties to the lowest sample_idx) on random data with many ties."""

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import artifacts, schemas
from raft_data.prompts import DataError
from raft_data.select import select

from .conftest import make_config


def write_round(cfg, samples: list[dict], scores: list[dict], n_shards: int = 3) -> None:
    rdir = artifacts.round_dir(cfg, 0)
    for stage, rows, schema in (
        ("samples", samples, schemas.SAMPLES),
        ("scores", scores, schemas.scores_schema(["vader"])),
    ):
        for i in range(n_shards):
            part = rows[i * len(rows) // n_shards : (i + 1) * len(rows) // n_shards]
            artifacts.write_parquet(
                pa.Table.from_pylist(part, schema=schema), rdir / stage / artifacts.shard_name(i, n_shards), schema
            )
        artifacts.write_json({"config_hash": f"{stage}-hash"}, rdir / stage / "manifest.json")


def random_round(seed: int, n_prompts: int = 200, k: int = 6):
    rng = random.Random(seed)
    samples, scores = [], []
    for p in range(n_prompts):
        for s in rng.sample(range(k), k):  # shuffled order on disk
            pid = f"p{p:04d}"
            samples.append(
                dict(
                    prompt_id=pid,
                    sample_idx=s,
                    prompt="x",
                    completion=f"c{s}",
                    n_tokens=3,
                    truncated=False,
                    source="policy",
                    generator="g",
                    seed=1,
                    round=0,
                )
            )
            reward = float(rng.choice([0.0, 0.5, 1.0]))  # few values: many ties
            scores.append(dict(prompt_id=pid, sample_idx=s, reward=reward, vader=reward))
    return samples, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_per_prompt_equals_brute_force_argmax(tmp_path, tiny_model_dir, prompts_file, seed) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    samples, scores = random_round(seed)
    write_round(cfg, samples, scores)
    select(cfg, 0)
    got = pq.read_table(artifacts.round_dir(cfg, 0) / "selected" / artifacts.shard_name(0, 1)).to_pylist()

    best: dict[str, tuple[float, int]] = {}
    for row in scores:
        key = (row["reward"], -row["sample_idx"])
        if row["prompt_id"] not in best or key > best[row["prompt_id"]]:
            best[row["prompt_id"]] = key
    want = {pid: (r, -neg_idx) for pid, (r, neg_idx) in best.items()}
    assert {r["prompt_id"]: (r["reward"], r["sample_idx"]) for r in got} == want
    assert [r["prompt_id"] for r in got] == sorted(want)
    assert all(r["completion"] == f"c{r['sample_idx']}" for r in got)  # joined to the right sample


def test_rerun_with_force_is_byte_identical(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    write_round(cfg, *random_round(7))
    select(cfg, 0)
    path = artifacts.round_dir(cfg, 0) / "selected" / artifacts.shard_name(0, 1)
    first = path.read_bytes()
    select(cfg, 0, force=True)
    assert path.read_bytes() == first


def test_scores_missing_for_some_samples_fail_the_data_test(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    samples, scores = random_round(3)
    write_round(cfg, samples, scores[:-1])
    with pytest.raises(DataError, match="scores for .* samples"):
        select(cfg, 0)
    assert not (artifacts.round_dir(cfg, 0) / "selected").exists()
