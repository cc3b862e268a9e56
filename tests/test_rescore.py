"""`raft-data rescore` and `raft-data compare-scores`: a round's samples scored again into rescores/NAME/ by the score
stage's own function, scores/ untouched byte for byte, and the comparison checked against numbers worked out by hand
on a planted round."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.cli.main import main
from raft_data.errors import ConfigError, StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.tools.compare_scores import compare_scores, compare_tables

from .conftest import make_config
from .fake_rounds import fake_config, write_round

# 3 prompts x 3 samples: reward a (what scores/ holds) and reward b (planted in the completion for the rescore)
PLANTED = {
    "p0": ([1, 0, 1], [1, 1, 0]),
    "p1": ([0, 0, 1], [0, 1, 1]),
    "p2": ([0, 1, 0], [0, 1, 0]),
}


def folder_bytes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def planted_round(tmp_path: Path):
    cfg = fake_config(tmp_path, strategy="best_per_prompt")
    cfg.score.reward = "tests.rewards_for_tests:planted"
    rows = []
    for pid, (a, b) in PLANTED.items():
        for i in range(3):
            rows.append(
                {
                    "prompt_id": pid,
                    "sample_idx": i,
                    "prompt": f"prompt {pid}",
                    "completion": f"sample {i} b={b[i]}",
                    "n_tokens": 3,
                    "truncated": False,
                    "reward": float(a[i]),
                    "round": 0,
                }
            )
    write_round(cfg, 0, rows, n_shards=2)
    return cfg


def test_rescore_of_a_planted_round_matches_the_hand_computation(tmp_path):
    cfg = planted_round(tmp_path)
    scores = storage.round_dir(cfg, 0) / "scores"
    before = folder_bytes(scores)
    exp_before = sorted(p.name for p in storage.experiment_dir(cfg).iterdir())

    manifest = score(cfg, 0, into="planted")

    folder = storage.round_dir(cfg, 0) / "rescores" / "planted"
    assert manifest["rescore"] == {"into": "planted", "beside": "scores"} and manifest["stage"] == "score"
    samples = storage.read_json(storage.round_dir(cfg, 0) / "samples" / "manifest.json")
    assert manifest["inputs"]["samples"]["identity"] == samples["identity"]
    assert manifest["config"]["score"]["reward"] == "tests.rewards_for_tests:planted"
    rows = [r for f in storage.shard_files(folder) for r in pq.read_table(f).to_pylist()]
    assert {(r["prompt_id"], r["sample_idx"]): r["reward"] for r in rows} == {
        (pid, i): float(b[i]) for pid, (_, b) in PLANTED.items() for i in range(3)
    }

    result = compare_scores(cfg, 0, "scores", "rescores/planted")

    # by hand: 9 samples; (a, b) = (1,1) x3, (1,0) x1, (0,1) x2, (0,0) x3; agreement 6/9; both binary, so Spearman
    # on average ranks = Pearson = phi = (3*3 - 1*2) / sqrt(4*5*5*4) = 0.35; best of a: p0 s0, p1 s2, p2 s1 and of
    # b: p0 s0 (tie with s1, the lower index wins), p1 s1 (tie with s2), p2 s1: only p1 changes
    assert result["n_paired"] == 9 and result["binary"] is True
    assert math.isclose(result["agreement"], 6 / 9)
    assert (result["a1_b1"], result["a1_b0"], result["a0_b1"], result["a0_b0"]) == (3, 1, 2, 3)
    assert math.isclose(result["spearman"], 0.35) and math.isclose(result["pearson"], 0.35)
    assert result["best_changed"] == 1
    flips = {p["prompt_id"]: p for p in result["flipped_prompts"]}
    assert set(flips) == {"p0", "p1"}  # p0: best stays s0 but two samples flip; p1: best changes
    assert (flips["p1"]["best_a"], flips["p1"]["best_b"], flips["p1"]["n_disagree"]) == (2, 1, 1)
    assert (flips["p0"]["best_changed"], flips["p0"]["n_disagree"]) == (False, 2)
    sel = result["selection"]
    assert (sel["kept_a"], sel["kept_b"], sel["kept_both"]) == (3, 3, 2)
    assert sel["only_a"] == [{"prompt_id": "p1", "sample_idx": 2}]
    assert sel["only_b"] == [{"prompt_id": "p1", "sample_idx": 1}]

    assert folder_bytes(scores) == before  # scores/ untouched, byte for byte
    assert sorted(p.name for p in storage.experiment_dir(cfg).iterdir()) == exp_before  # no scratch left behind


def test_selection_changes_follow_the_configured_strategy(tmp_path):
    cfg = planted_round(tmp_path)
    score(cfg, 0, into="planted")
    cfg.select.strategy, cfg.select.n = "top_n_per_prompt", 2
    sel = compare_scores(cfg, 0, "scores", "rescores/planted")["selection"]
    # top 2 by (reward desc, sample_idx): a keeps p0 {0,2}, p1 {2,0}, p2 {1,0}; b keeps p0 {0,1}, p1 {1,2}, p2 {1,0}
    assert sel["only_a"] == [{"prompt_id": "p0", "sample_idx": 2}, {"prompt_id": "p1", "sample_idx": 0}]
    assert sel["only_b"] == [{"prompt_id": "p0", "sample_idx": 1}, {"prompt_id": "p1", "sample_idx": 1}]


def test_compare_refuses_an_unfinished_side_and_bad_names(tmp_path):
    cfg = planted_round(tmp_path)
    with pytest.raises(StageError, match="raft-data rescore --into nope"):
        compare_scores(cfg, 0, "scores", "rescores/nope")
    with pytest.raises(ConfigError, match="expected scores or rescores/<name>"):
        compare_scores(cfg, 0, "scores", "samples")
    with pytest.raises(ConfigError, match="--into='../up' is invalid"):
        score(cfg, 0, into="../up")


def reference_spearman(a: list[float], b: list[float]) -> float | None:
    def ranks(xs: list[float]) -> list[float]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return None if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def score_table(values: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "prompt_id": [f"p{i // 3}" for i in range(len(values))],
            "sample_idx": [i % 3 for i in range(len(values))],
            "reward": pa.array(values, pa.float64()),
            "error": [None if v is not None else "failed" for v in values],
        },
        schema=pa.schema(
            [("prompt_id", pa.string()), ("sample_idx", pa.int64()), ("reward", pa.float64()), ("error", pa.string())]
        ),
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1.0, 0.5, 2.0, None]), st.sampled_from([0.0, 1.0, -1.0, None])),
        min_size=1,
        max_size=30,
    )
)
def test_correlation_and_agreement_match_a_plain_python_computation(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    summary, prompts = compare_tables(score_table(a), score_table(b))
    both = [(x, y) for x, y in pairs if x is not None and y is not None]
    assert summary["n_paired"] == len(both)
    if len(both) >= 2:
        expected = reference_spearman([x for x, _ in both], [y for _, y in both])
        assert (summary["spearman"] is None) == (expected is None)
        if expected is not None:
            assert math.isclose(summary["spearman"], expected, abs_tol=1e-9)
    binary = bool(both) and all(x in (0, 1) and y in (0, 1) for x, y in both)
    assert summary["binary"] == binary
    if binary:
        cells = (summary["a1_b1"], summary["a1_b0"], summary["a0_b1"], summary["a0_b0"])
        assert sum(cells) == len(both)
        assert math.isclose(summary["agreement"], sum(x == y for x, y in both) / len(both))
    assert sum(p["n_samples"] for p in prompts) == len(both)


def test_rescore_command_on_a_finished_tiny_round(tmp_path, tiny_model_dir, prompts_file, capsys):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    score(cfg, 0)
    rdir = storage.round_dir(cfg, 0)
    before = folder_bytes(rdir / "scores")
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")

    main(["rescore", "--config", str(config), "--round", "0", "--into", "length", "score.reward=length"])

    out = capsys.readouterr().out
    assert (
        "scores (a) vs rescores/length (b), 24 samples scored by both" in out and "selection (best_per_prompt," in out
    )
    samples = [r for f in storage.shard_files(rdir / "samples") for r in pq.read_table(f).to_pylist()]
    rescored = [r for f in storage.shard_files(rdir / "rescores" / "length") for r in pq.read_table(f).to_pylist()]
    assert [r["length"] for r in rescored] == [float(len(s["completion"])) for s in samples]
    assert folder_bytes(rdir / "scores") == before
    assert storage.read_json(rdir / "scores" / "manifest.json")["config"]["score"]["reward"] == "vader"

    main(["rescore", "--config", str(config), "--round", "0", "--into", "length", "score.reward=length"])
    assert "is done, skipping" in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:  # another reward into the same folder: refused, one line
        main(["rescore", "--config", str(config), "--round", "0", "--into", "length", "score.reward=vader_completion"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "made with another config" in err and err.count("\n") == 1

    main(["compare-scores", "--config", str(config), "--round", "0", "--b", "rescores/length", "--json"])
    import json

    result = json.loads(capsys.readouterr().out)
    assert result["n_paired"] == 24 and result["selection"]["kept_a"] == 8 and not result["binary"]
    assert folder_bytes(rdir / "scores") == before
