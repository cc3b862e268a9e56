"""Answers a program can check: extraction pitfalls, matching, the pass@k estimator, and the answer carried from
the prompts file into samples/ and scores/."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.config import ScoreConfig
from raft_data.data.arithmetic import arithmetic_problems
from raft_data.errors import ConfigError
from raft_data.rewards.checkers import (
    answer_line,
    as_number,
    boxed,
    checker_reward,
    last_number,
    majority_correct,
    pass_at_k,
    pass_metrics,
)
from raft_data.stages.generate import generate
from raft_data.stages.score import score

from .conftest import make_config


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("3 + 5 = 8", "8"),  # several numbers: the last
        ("The answer is 12.", "12"),  # trailing punctuation
        ("It is 1,000!", "1,000"),
        ("about -4", "-4"),
        ("half: 1/2", "1/2"),
        ("0.5", "0.5"),
        ("", None),  # empty completion
        ("no digits here", None),
    ],
)
def test_last_number(text: str, want: str | None) -> None:
    assert last_number(text) == want


def test_boxed_keeps_nested_braces_and_takes_the_last() -> None:
    assert boxed(r"first \boxed{2}, then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert boxed(r"\boxed{x^{2}}") == "x^{2}"
    assert boxed(r"\boxed{unclosed") is None
    assert boxed("nothing") is None


def test_answer_line() -> None:
    assert answer_line("Let me think.\nAnswer: 42.\n") == "42"
    assert answer_line("answer is: seven") == "seven"
    assert answer_line("Answer:") is None


@pytest.mark.parametrize(
    ("completion", "gold", "match", "want"),
    [
        ("1,000", "1000", "numeric", 1.0),
        ("1000", "1,000", "exact", 1.0),
        ("0.5", "1/2", "numeric", 1.0),
        ("8.", "8", "exact", 1.0),
        ("The sum is 8, not 9", "8", "numeric", 0.0),  # the last number counts
        ("", "8", "numeric", 0.0),
        ("8.0000001", "8", "numeric", 1.0),  # within tolerance
        ("8.1", "8", "numeric", 0.0),
    ],
)
def test_correct_reward(completion: str, gold: str, match: str, want: float) -> None:
    correct = checker_reward("correct", ScoreConfig(reward="correct", match=match))
    assert correct(["q"], [completion], [gold]) == [want]


def test_boxed_fraction_matches_a_decimal() -> None:
    correct = checker_reward("correct", ScoreConfig(reward="correct", extract="boxed", match="numeric"))
    assert correct(["q", "q"], [r"so \boxed{\frac{1}{2}}", r"\boxed{\frac{1}{3}}"], ["0.5", "0.5"]) == [1.0, 0.0]


def test_format_reward_and_other_extractions() -> None:
    cfg = ScoreConfig(reward="format", extract="boxed")
    assert checker_reward("format", cfg)(["q", "q"], [r"so \boxed{3}", "3"], ["3", "3"]) == [1.0, 0.0]
    cfg = ScoreConfig(reward="correct", extract="regex", extract_regex=r"=\s*(\d+)", match="exact")
    assert checker_reward("correct", cfg)(["q", "q"], ["2 + 2 = 4", "4"], ["4", "4"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="score.extract_regex"):
        ScoreConfig(extract="regex")


def test_as_number() -> None:
    assert as_number("1,234") == 1234
    assert as_number("-3/4") == -0.75
    assert as_number("x") is None
    assert as_number("1/0") is None


def test_pass_at_k_equals_the_brute_force_average() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randrange(1, 9)
        outcomes = [rng.random() < 0.4 for _ in range(n)]
        c = sum(outcomes)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert pass_at_k(8, 0, 4) == 0.0 and pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))


def test_majority_vote_and_metrics_by_level() -> None:
    assert majority_correct(["8", "9", "8"], [True, False, True])
    assert not majority_correct(["9", "9", "8"], [False, False, True])
    assert not majority_correct([None, None], [False, False])
    rows = []
    for pid, level, flags in (("a", "easy", [1, 1, 0, 0]), ("b", "easy", [0, 0, 0, 0]), ("c", "hard", [1, 0, 0, 0])):
        for i, ok in enumerate(flags):
            rows.append({"prompt_id": pid, "level": level, "correct": bool(ok), "extracted": "8" if ok else str(i)})
    m = pass_metrics(rows)
    assert m["pass@1"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["mixed"] == pytest.approx(2 / 3)
    assert m["by_level"]["easy"]["pass@1"] == pytest.approx(0.25)
    assert m["by_level"]["hard"]["prompts"] == 1
    assert set(m) >= {"pass@1", "pass@2", "pass@4", "maj@4"}


def test_arithmetic_problems_are_seeded_and_right() -> None:
    rows = arithmetic_problems(50, seed=1)
    assert rows == arithmetic_problems(50, seed=1)
    assert rows != arithmetic_problems(50, seed=2)
    assert {r["level"] for r in rows} == {"sum_1d", "sum_2d1d", "sum_2d2d", "mixed_1d"}
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        expr = r["prompt"].removeprefix("What is ").removesuffix("? Answer with the number only.")
        assert str(eval(expr, {"__builtins__": {}})) == r["answer"]  # test only: the expression is ours
    assert len(arithmetic_problems(400, levels=["sum_1d"])) == 100  # every single-digit pair once


def test_answers_flow_into_samples_and_scores(tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = tmp_path / "sums.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_problems(20, levels=["sum_1d"])))
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts,
        prompts={"answer_column": "answer", "level_column": "level", "n_prompts": 6},
        generate={"n_samples": 4, "max_new_tokens": 6, "n_shards": 2},
        score={"reward": [{"ref": "correct"}, {"ref": "format", "weight": 0.1}]},
    )
    generate(cfg, 0)
    manifest = score(cfg, 0)
    rdir = storage.round_dir(cfg, 0)
    samples = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(rdir / "samples"))
    scores = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(rdir / "scores"))
    answers = {json.loads(line)["id"]: json.loads(line)["answer"] for line in prompts.read_text().splitlines()}
    assert samples["answer"].to_pylist() == [answers[p] for p in samples["prompt_id"].to_pylist()]
    assert set(samples["level"].to_pylist()) == {"sum_1d"}
    assert scores["extracted"].to_pylist() == [last_number(c) for c in samples["completion"].to_pylist()]
    assert "pass@4" in manifest["pass_at_k"] and manifest["pass_at_k"]["prompts"] == 6
    assert manifest["pass_at_k"]["by_level"]["sum_1d"]["samples"] == 24


def test_a_checker_without_answers_is_one_error(tmp_path: Path, tiny_model_dir: Path, prompts_file: Path) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, score={"reward": "correct"})
    generate(cfg, 0)
    with pytest.raises(ConfigError, match="set prompts.answer_column"):
        score(cfg, 0)


def test_curriculum_draws_harder_levels_as_easier_ones_are_solved(tmp_path: Path) -> None:
    from raft_data.data.prompts import draw_round_prompts
    from raft_data.stages.generate import curriculum_levels

    prompts = tmp_path / "all.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_problems(30)))
    levels = ["sum_1d", "sum_2d1d", "sum_2d2d"]
    cfg = make_config(
        tmp_path,
        tmp_path / "unused",
        prompts,
        prompts={"answer_column": "answer", "level_column": "level", "levels": levels, "curriculum_threshold": 0.5},
    )

    def scored(round_idx: int, by_level: dict[str, float]) -> None:
        folder = storage.round_dir(cfg, round_idx) / "scores"
        manifest = {"pass_at_k": {"by_level": {lv: {"pass@1": v} for lv, v in by_level.items()}}}
        storage.write_json(manifest, folder / "manifest.json")

    assert curriculum_levels(cfg, 0) == ["sum_1d"]
    scored(0, {"sum_1d": 0.7})
    assert curriculum_levels(cfg, 1) == ["sum_1d", "sum_2d1d"]
    scored(1, {"sum_1d": 0.8, "sum_2d1d": 0.2})
    assert curriculum_levels(cfg, 2) == ["sum_1d", "sum_2d1d"]
    scored(2, {"sum_2d1d": 0.6})  # sum_1d keeps its last measure, 0.8
    assert curriculum_levels(cfg, 3) == levels
    drawn = draw_round_prompts(cfg.prompts, 0, 1, ["sum_1d", "sum_2d1d"])
    assert set(drawn["level"].to_pylist()) <= {"sum_1d", "sum_2d1d"}


def test_math_verify_match() -> None:
    pytest.importorskip("math_verify")
    correct = checker_reward("correct", ScoreConfig(reward="correct", extract="boxed", match="math_verify"))
    got = correct(["q"] * 3, [r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{x+1}"], ["0.5", r"\frac{1}{2}", "1+x"])
    assert got == [1.0, 1.0, 1.0]
    assert correct(["q"], [r"\boxed{2}"], ["3"]) == [0.0]
