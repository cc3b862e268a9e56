"""Reasoning-gym task families as prompts with their own checkers, and the train / held-out split: disjoint seeds,
prompts never in both, held-out levels never trained on, and what the manifests record of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.config import ScoreConfig
from raft_data.data.arithmetic import arithmetic_problems
from raft_data.data.gym import gym_problems, seed_ranges_overlap, write_gym
from raft_data.data.prompts import across_levels, draw_round_prompts, eval_prompts, split_prompts, split_record
from raft_data.errors import ConfigError, DataError
from raft_data.rewards.checkers import answer_tag
from raft_data.rewards.loading import configured_reward, correctness, load_components
from raft_data.stages.generate import generate
from raft_data.stages.score import score

from .conftest import make_config

pytest.importorskip("reasoning_gym")

LEGS = {"min_animals": 1, "max_animals": 2, "max_instances": 3}
GYM_PROMPTS = {"id_column": "id", "answer_column": "answer", "level_column": "level", "split_column": "split"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The builder: seeds name problems, train and held-out seeds never overlap, no held-out question is a train one


def test_problems_come_from_their_seeds_and_the_splits_share_no_question() -> None:
    rows, record = gym_problems("leg_counting", LEGS, train_seed=0, heldout_seed=500, n_train=40, n_heldout=20)
    assert rows == gym_problems("leg_counting", LEGS, train_seed=0, heldout_seed=500, n_train=40, n_heldout=20)[0]
    train = [r for r in rows if r["split"] == "train"]
    heldout = [r for r in rows if r["split"] == "heldout"]
    assert (len(train), len(heldout)) == (40, 20)
    assert len({r["id"] for r in rows}) == 60
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    train_seeds = [int(r["id"].split(":")[1]) for r in train]
    heldout_seeds = [int(r["id"].split(":")[1]) for r in heldout]
    assert all(record["train_seeds"][0] <= s < record["train_seeds"][1] for s in train_seeds)
    assert all(record["heldout_seeds"][0] <= s < record["heldout_seeds"][1] for s in heldout_seeds)
    assert record["train_seeds"][0] == 0 and record["heldout_seeds"][0] == 500
    # the gold answer is the family's own: scored 1 by its checker
    gold = json.loads(train[0]["answer"])
    assert gold["family"] == "leg_counting" and gold["metadata"]["total_legs"] == int(gold["answer"])


@pytest.mark.parametrize(("train_seed", "heldout_seed"), [(0, 0), (0, 100), (100, 80), (0, 159)])
def test_overlapping_seeds_are_refused(train_seed: int, heldout_seed: int) -> None:
    # 40 train problems may use up to 4 * 40 seeds ([0, 160) from 0), 10 held-out ones 40 ([80, 120) from 80)
    with pytest.raises(ConfigError, match="overlap"):
        gym_problems("leg_counting", LEGS, train_seed=train_seed, heldout_seed=heldout_seed, n_train=40, n_heldout=10)


@given(a0=st.integers(-50, 50), a_len=st.integers(1, 20), b0=st.integers(-50, 50), b_len=st.integers(1, 20))
def test_seed_range_overlap_is_a_shared_seed(a0: int, a_len: int, b0: int, b_len: int) -> None:
    shared = set(range(a0, a0 + a_len)) & set(range(b0, b0 + b_len))
    assert seed_ranges_overlap((a0, a0 + a_len), (b0, b0 + b_len)) == bool(shared)


def test_a_family_too_small_for_the_request_is_refused() -> None:
    tiny = {"min_animals": 1, "max_animals": 1, "max_instances": 1}  # one animal, one of it: a few dozen questions
    with pytest.raises(ConfigError, match="distinct questions"):
        gym_problems("leg_counting", tiny, n_train=200, n_heldout=10, heldout_seed=10_000)


def test_unknown_family_and_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        gym_problems("no_such_family")
    run = [sys.executable, "-m", "raft_data", "gym", "--family", "leg_counting", "--out", str(tmp_path / "g.jsonl")]
    for extra, want in [(["--settings", "{oops"], "is not JSON"), (["--heldout-seed", "5"], "overlap")]:
        proc = subprocess.run(run + extra, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and want in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "g.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The reward: the family's score_answer on the extracted answer, and `correct` beside it


def gym_rows(n_train: int = 12, n_heldout: int = 6) -> list[dict]:
    rows, _ = gym_problems("leg_counting", LEGS, heldout_seed=1000, n_train=n_train, n_heldout=n_heldout)
    return rows


def test_reasoning_gym_reward_scores_with_the_familys_checker() -> None:
    rows = gym_rows()
    cfg = ScoreConfig(reward="reasoning_gym", extract="last_number")
    components = load_components(cfg)
    assert [(c.name, c.weight) for c in components] == [("reasoning_gym", 1.0), ("correct", 0.0)]
    prompts = [r["prompt"] for r in rows[:3]]
    golds = [json.loads(r["answer"])["answer"] for r in rows[:3]]
    completions = [f"There are {golds[0]} legs.", f"{int(golds[1]) + 1}", "I cannot tell."]
    answers = [r["answer"] for r in rows[:3]]
    assert configured_reward(cfg)(prompts, completions, answers) == [1.0, 0.0, 0.0]
    assert correctness(cfg)([], completions, answers) == [1.0, 0.0, 0.0]
    tagged = ScoreConfig(reward="reasoning_gym", extract="answer_tag")
    assert correctness(tagged)([], [f"so <answer>{golds[0]}</answer>", golds[0]], answers[:1] * 2) == [1.0, 0.0]


def test_a_gold_answer_that_is_not_a_gym_entry_is_a_data_error() -> None:
    fn = load_components(ScoreConfig(reward="reasoning_gym"))[0].fn
    with pytest.raises(DataError, match="raft-data gym"):
        fn(["q"], ["12"], ["12"])


@pytest.mark.parametrize(
    ("text", "want"),
    [("<answer>7</answer>", "7"), ("<answer> a </answer> then <answer>\nb\n</answer>", "b"), ("<answer>7", None)],
)
def test_answer_tag(text: str, want: str | None) -> None:
    assert answer_tag(text) == want


# ---------------------------------------------------------------------------------------------------------------------
# The split: a split column, prompts never in both, train levels, held-out subsets across levels


def test_split_column_decides_the_split_and_the_manifest_records_it(tmp_path: Path) -> None:
    path = tmp_path / "gym.jsonl"
    write_gym(path, "leg_counting", config=LEGS, heldout_seed=1000, n_train=12, n_heldout=6)
    cfg = make_config(tmp_path, tmp_path / "unused", path, prompts=GYM_PROMPTS)
    train, heldout = split_prompts(cfg.prompts)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(heldout["prompt_id"].to_pylist()) == {r["id"] for r in rows if r["split"] == "heldout"}
    assert set(train["prompt_id"].to_pylist()) == {r["id"] for r in rows if r["split"] == "train"}
    record = split_record(cfg.prompts)
    assert (record["n_train"], record["n_heldout"], record["shared_ids"], record["shared_prompts"]) == (12, 6, 0, 0)
    assert record["source"]["heldout_seeds"][0] == 1000 and record["source"]["family"] == "leg_counting"


@pytest.mark.parametrize(
    ("change", "want"),
    [
        ({"split": "test"}, "a split is train or heldout"),
        ({"split": None}, "a split is train or heldout"),
    ],
)
def test_bad_split_values_are_refused(tmp_path: Path, change: dict, want: str) -> None:
    rows = gym_rows()
    rows[3] |= change
    cfg = make_config(tmp_path, tmp_path / "unused", write_jsonl(tmp_path / "p.jsonl", rows), prompts=GYM_PROMPTS)
    with pytest.raises(DataError, match=want):
        split_prompts(cfg.prompts)


def test_a_prompt_in_both_splits_is_refused(tmp_path: Path) -> None:
    rows = gym_rows()
    held = next(r for r in rows if r["split"] == "heldout")
    # the same id in both splits
    twice = rows + [held | {"split": "train"}]
    cfg = make_config(tmp_path, tmp_path / "unused", write_jsonl(tmp_path / "a.jsonl", twice), prompts=GYM_PROMPTS)
    with pytest.raises(DataError, match="given twice .* two different splits"):
        split_prompts(cfg.prompts)
    # the same question under another id
    leaked = rows + [held | {"id": "leg_counting:copy", "split": "train"}]
    cfg = make_config(tmp_path, tmp_path / "unused", write_jsonl(tmp_path / "b.jsonl", leaked), prompts=GYM_PROMPTS)
    with pytest.raises(DataError, match="both held out .* and in the train pool"):
        split_prompts(cfg.prompts)


def test_train_levels_train_on_some_levels_and_hold_out_all(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", arithmetic_problems(60))
    prompts = {"id_column": "id", "answer_column": "answer", "level_column": "level", "heldout_fraction": 0.3}
    cfg = make_config(
        tmp_path,
        tmp_path / "unused",
        path,
        prompts=prompts | {"train_levels": ["sum_1d"], "n_prompts": 500},
        eval={"n_prompts": 40},
    )
    for round_idx in range(3):
        assert set(draw_round_prompts(cfg.prompts, 0, round_idx)["level"].to_pylist()) == {"sum_1d"}
    held = eval_prompts(cfg)
    counts = {lv: held["level"].to_pylist().count(lv) for lv in ("sum_1d", "sum_2d1d", "sum_2d2d", "mixed_1d")}
    assert sum(counts.values()) == 40 and min(counts.values()) >= 9  # every level, about a quarter each
    _, heldout = split_prompts(cfg.prompts)
    assert set(held["prompt_id"].to_pylist()) <= set(heldout["prompt_id"].to_pylist())
    with pytest.raises(ConfigError, match="prompts.train_levels"):
        make_config(
            tmp_path, tmp_path / "unused", path, prompts=prompts | {"levels": ["sum_1d"], "train_levels": ["x"]}
        )


@settings(max_examples=60, deadline=None)
@given(levels=st.lists(st.sampled_from("abcd"), min_size=1, max_size=40), n=st.integers(0, 50))
def test_across_levels_takes_levels_in_turn(levels: list[str], n: int) -> None:
    table = pa.table({"prompt_id": [str(i) for i in range(len(levels))], "level": levels})
    got = across_levels(table, n)
    ids = [int(p) for p in got["prompt_id"].to_pylist()]
    assert len(ids) == min(n, len(levels)) and ids == sorted(set(ids))  # source order, no repeats
    counts = {lv: [levels[i] for i in ids].count(lv) for lv in set(levels)}
    for lv, c in counts.items():  # a level short of another by more than one has given all it has
        if max(counts.values()) - c > 1:
            assert c == levels.count(lv)
    # within a level, the first rows
    for lv, c in counts.items():
        assert [i for i in ids if levels[i] == lv] == [i for i, x in enumerate(levels) if x == lv][:c]


# ---------------------------------------------------------------------------------------------------------------------
# A round on a gym family: `correct` and pass@k in scores/, the split in the generate manifest


def test_a_round_on_a_gym_family(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "gym.jsonl"
    write_gym(path, "leg_counting", config=LEGS, heldout_seed=1000, n_train=12, n_heldout=6)
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        path,
        prompts=GYM_PROMPTS | {"n_prompts": 4},
        generate={"n_samples": 2, "max_new_tokens": 4, "n_shards": 1},
        score={"reward": "reasoning_gym"},
    )
    manifest = generate(cfg, 0)
    assert manifest["split"]["n_heldout"] == 6 and manifest["split"]["source"]["train_seeds"][0] == 0
    heldout_ids = {json.loads(line)["id"] for line in path.read_text().splitlines() if '"heldout"' in line}
    prompts = pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet")
    assert not set(prompts["prompt_id"].to_pylist()) & heldout_ids
    manifest = score(cfg, 0)
    assert manifest["components"] == ["reasoning_gym", "correct"]
    scores = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(storage.round_dir(cfg, 0) / "scores"))
    assert scores["reward"].to_pylist() == scores["reasoning_gym"].to_pylist()
    flags, rewards = scores["correct"].to_pylist(), scores["reward"].to_pylist()
    assert flags == [float(r >= 1.0) for r in rewards]
    assert manifest["pass_at_k"]["prompts"] == 4 and "leg_counting" in manifest["pass_at_k"]["by_level"]


# ---------------------------------------------------------------------------------------------------------------------
# Held-out pass@1 by level in the eval line and the report


def test_pass_at_1_by_level_in_the_eval_line_and_the_report() -> None:
    from raft_data.report import pass_by_html
    from raft_data.stages.evaluate import format_metrics

    def metrics(by_level: dict[str, float]) -> dict:
        levels = {lv: {"pass@1": v} for lv, v in by_level.items()}
        return {"reward_sampled": 0.5, "pass_at_k": {"pass@1": 0.5, "by_level": levels}}

    line = format_metrics(metrics({"sum_1d": 0.75, "sum_2d2d": 0.125}))
    assert "sum_1d pass@1 0.750" in line and "sum_2d2d pass@1 0.125" in line
    assert "pass@1 0.500" in format_metrics(metrics({"sum_1d": 0.5})) and "sum_1d" not in format_metrics(
        metrics({"sum_1d": 0.5})
    )
    rows = [
        {"label": "base", "metrics": metrics({"sum_1d": 0.25, "mixed_1d": 0.0})},
        {"label": "0", "metrics": metrics({"sum_1d": 0.625, "mixed_1d": 0.125})},
    ]
    page = pass_by_html(rows)
    assert page.count("<tr>") == 3 and "round 0" in page
    assert page.index("0.250") < page.index("0.000") < page.index("0.625") < page.index("0.125")
    assert pass_by_html([{"label": "base", "metrics": metrics({"sum_1d": 0.5})}]) == ""


def test_families_mixed_in_one_file_are_each_scored_by_their_own_checker(tmp_path: Path) -> None:
    legs, _ = gym_problems("leg_counting", LEGS, heldout_seed=1000, n_train=6, n_heldout=3)
    sums, _ = gym_problems("chain_sum", {"min_terms": 2, "max_terms": 2}, heldout_seed=1000, n_train=6, n_heldout=3)
    rows = legs + sums
    cfg = make_config(tmp_path, tmp_path / "unused", write_jsonl(tmp_path / "m.jsonl", rows), prompts=GYM_PROMPTS)
    train, heldout = split_prompts(cfg.prompts)
    assert set(heldout["level"].to_pylist()) == {"leg_counting", "chain_sum"} and train.num_rows == 12
    golds = [json.loads(r["answer"])["answer"] for r in rows]
    check = correctness(ScoreConfig(reward="reasoning_gym"))
    answers = [r["answer"] for r in rows]
    assert check([r["prompt"] for r in rows], golds, answers) == [1.0] * len(rows)
    # another family's right answer is wrong here, whatever the prompt says
    shifted = golds[1:] + golds[:1]
    expected = [float(a == b) for a, b in zip(shifted, golds, strict=True)]
    assert check([r["prompt"] for r in rows], shifted, answers) == expected


def test_new_prompts_fields_enter_the_config_hash_only_when_set(tmp_path: Path) -> None:
    from raft_data.config import PromptsConfig, prompts_hashed

    plain = prompts_hashed(PromptsConfig(path="p.jsonl"))
    assert "split_column" not in plain and "train_levels" not in plain  # rounds made before them stay valid
    assert prompts_hashed(PromptsConfig(path="p.jsonl", split_column="split"))["split_column"] == "split"
    levels = PromptsConfig(path="p.jsonl", level_column="level", train_levels=["a"])
    assert prompts_hashed(levels)["train_levels"] == ["a"]
