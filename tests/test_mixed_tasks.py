"""Mixed tasks: a `task` column routes each row to its own verifier (score.tasks), selection caps each task and
level (select.task_quota, select.level_quota), pass@k is reported per task, and `raft-data mix` builds such a set
from several experiments without moving any held-out prompt into training."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.config import config_from_dict
from raft_data.data.mix import mixed_problems
from raft_data.data.prompts import split_prompts
from raft_data.errors import ConfigError, DataError
from raft_data.rewards.checkers import pass_metrics
from raft_data.rewards.loading import load_routes, routed_reward
from raft_data.stages.evaluate import evaluate_model
from raft_data.stages.generate import generate
from raft_data.stages.score import score, score_table
from raft_data.stages.select import select

from .conftest import make_config
from .fake_rounds import fake_config, write_round

ARITH_TASKS = {"sums": {"reward": "correct", "extract": "last_number"}, "words": {"reward": "length"}}
MIXED_PROMPTS = {
    "id_column": "id",
    "answer_column": "answer",
    "level_column": "level",
    "split_column": "split",
    "task_column": "task",
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mixed_rows(n: int = 6) -> list[dict]:
    """Sums checked by their answer, and word prompts scored by length; a third of each held out."""
    rows = []
    for i in range(n):
        split = "heldout" if i % 3 == 2 else "train"
        level = "easy" if i % 2 else "hard"
        rows.append({"id": f"s{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1), "level": level})
        rows.append({"id": f"w{i}", "prompt": f"Say a word about {i}.", "answer": "-", "level": "easy"})
        rows[-2] |= {"split": split, "task": "sums"}
        rows[-1] |= {"split": split, "task": "words"}
    return rows


def samples_table(rows: list[tuple[str, str, str, str | None]]) -> pa.Table:
    """(prompt_id, task, completion, answer) rows as a samples shard's columns that scoring reads."""
    return pa.table(
        {
            "prompt_id": [r[0] for r in rows],
            "sample_idx": list(range(len(rows))),
            "prompt": ["q"] * len(rows),
            "completion": [r[2] for r in rows],
            "truncated": [False] * len(rows),
            "answer": [r[3] for r in rows],
            "task": [r[1] for r in rows],
            "error": pa.nulls(len(rows), pa.string()),
        }
    )


# ---------------------------------------------------------------------------------------------------------------------
# Config: what a task may set, and what needs the task column


def mixed_config(tmp_path: Path, **sections: dict):
    data = {
        "experiment": {"name": "mixed", "output_root": str(tmp_path / "runs")},
        "model": {"name_or_path": "unused"},
        "prompts": {"path": "p.jsonl", **MIXED_PROMPTS},
        "generate": {"n_samples": 2},
        "score": {"reward": "correct", "tasks": ARITH_TASKS},
        "select": {"strategy": "best_per_prompt"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_from_dict(data)


@pytest.mark.parametrize(
    ("change", "want"),
    [
        ({"prompts": {"task_column": None}}, "score.tasks="),
        ({"score": {"tasks": {"sums": {"beta": 0.1}}}}, "unknown key score.tasks.sums.beta"),
        ({"score": {"tasks": {"sums": {"reward": "a/file.py"}}}}, "score.tasks.sums: score.reward='a/file.py'"),
        ({"score": {"tasks": {"sums": {"match": "fuzzy"}}}}, "score.tasks.sums: score.match='fuzzy'"),
        ({"score": {"tasks": {"sums": "correct"}}}, "score.tasks.sums="),
        ({"select": {"task_quota": {"sums": -1}}}, "select.task_quota.sums=-1"),
        ({"select": {"task_quota": {"sums": True}}}, "select.task_quota.sums=True"),
        (
            {"prompts": {"task_column": None}, "score": {"tasks": {}}, "select": {"task_quota": {"a": 1}}},
            "select.task_quota=",
        ),  # fmt: skip
        ({"prompts": {"level_column": None}, "select": {"level_quota": {"easy": 1}}}, "select.level_quota="),
    ],
)
def test_bad_task_settings_are_one_line_errors(tmp_path: Path, change: dict, want: str) -> None:
    with pytest.raises(ConfigError) as e:
        mixed_config(tmp_path, **change)
    assert want in str(e.value) and "\n" not in str(e.value)


def test_new_fields_enter_the_config_hashes_only_when_set(tmp_path: Path) -> None:
    from raft_data.config import PromptsConfig, SelectConfig, prompts_hashed

    assert "task_column" not in prompts_hashed(PromptsConfig(path="p.jsonl"))
    plain = SelectConfig().selection_fields()
    assert "task_quota" not in plain and "level_quota" not in plain  # selections made before them keep their hash
    assert SelectConfig(task_quota={"a": 2}).selection_fields()["task_quota"] == {"a": 2}


# ---------------------------------------------------------------------------------------------------------------------
# Routing: each row is scored by its own task's verifier, in the shard's order


def test_each_row_is_scored_by_its_tasks_verifier_in_order(tmp_path: Path) -> None:
    cfg = mixed_config(tmp_path)
    routes = load_routes(cfg.score)
    rows = [
        ("s1", "sums", "It is 2.", "2"),
        ("w1", "words", "hello there", "-"),
        ("s2", "sums", "It is 7.", "3"),
        ("w2", "words", "hi", "-"),
        ("s3", "sums", "no number", "4"),
    ]
    table = score_table(samples_table(rows), routes, cfg, None, tmp_path / "shard.parquet")
    assert table["prompt_id"].to_pylist() == ["s1", "w1", "s2", "w2", "s3"]
    assert table["correct"].to_pylist() == [1.0, None, 0.0, None, 0.0]
    assert table["length"].to_pylist() == [None, 11.0, None, 2.0, None]
    assert table["reward"].to_pylist() == [1.0, 11.0, 0.0, 2.0, 0.0]
    assert table["extracted"].to_pylist() == ["2", None, "7", None, None]


def test_an_unknown_reward_of_a_task_names_the_task(tmp_path: Path) -> None:
    cfg = mixed_config(tmp_path, score={"tasks": {"sums": {"reward": "no_such_reward"}}})
    with pytest.raises(ConfigError) as e:
        load_routes(cfg.score)
    assert str(e.value).startswith("score.tasks.sums: score.reward='no_such_reward' is unknown")


def test_a_task_score_tasks_does_not_list_stops_the_stage_naming_the_row(tmp_path: Path) -> None:
    cfg = mixed_config(tmp_path)
    rows = [("s1", "sums", "2", "2"), ("x9", "poetry", "a poem", "-")]
    with pytest.raises(DataError) as e:
        score_table(samples_table(rows), load_routes(cfg.score), cfg, None, tmp_path / "shard.parquet")
    assert "prompt_id=x9" in str(e.value) and "'poetry'" in str(e.value) and "sums, words" in str(e.value)
    # eval and `heldout` route the same way, and a row with no task at all is refused too
    reward = routed_reward(cfg.score)
    assert reward(["q", "q"], ["It is 2.", "hello"], ["2", "-"], ["sums", "words"]) == [1.0, 5.0]
    for task in (None, "poetry"):
        with pytest.raises(DataError, match="score.tasks lists sums, words"):
            reward(["q"], ["2"], ["2"], [task])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sums", "words"]), st.integers(0, 9), st.integers(0, 9)), max_size=30))
def test_routing_matches_scoring_each_task_alone(rows: list[tuple[str, int, int]]) -> None:
    """Scoring a mixed shard gives each row what its task's reward gives it alone, whatever the order."""
    cfg = mixed_config(Path("/nonexistent"))
    routes = load_routes(cfg.score)
    table_rows = [(f"p{i}", task, f"answer {got}", str(gold)) for i, (task, got, gold) in enumerate(rows)]
    mixed = score_table(samples_table(table_rows), routes, cfg, None, Path("x"))
    for task in ("sums", "words"):
        alone_rows = [r for r in table_rows if r[1] == task]
        alone = score_table(samples_table(alone_rows), {task: routes[task]}, cfg, None, Path("x"))
        at = [i for i, r in enumerate(table_rows) if r[1] == task]
        assert [mixed["reward"][i].as_py() for i in at] == alone["reward"].to_pylist()


def test_pass_metrics_by_task() -> None:
    rows = [
        {"prompt_id": "a", "level": "x", "task": "sums", "correct": True, "extracted": "1"},
        {"prompt_id": "a", "level": "x", "task": "sums", "correct": False, "extracted": "2"},
        {"prompt_id": "b", "level": "y", "task": "code", "correct": False, "extracted": None},
        {"prompt_id": "b", "level": "y", "task": "code", "correct": False, "extracted": None},
    ]
    m = pass_metrics(rows)
    assert m["by_task"]["sums"]["pass@1"] == 0.5 and m["by_task"]["code"]["pass@2"] == 0.0
    assert m["pass@1"] == 0.25 and set(m["by_level"]) == {"x", "y"}
    assert "by_task" not in pass_metrics([{k: v for k, v in r.items() if k != "task"} for r in rows])
    # the round line, `status` and the report show each task's pass@1
    from raft_data.report import pass_by_html
    from raft_data.stages.evaluate import format_metrics
    from raft_data.tools.status import format_pass

    assert "task code pass@1 0.000" in format_metrics({"reward_sampled": 0.5, "pass_at_k": m})
    assert "task sums pass@1 0.500" in format_pass(m)
    page = pass_by_html([{"label": "base", "metrics": {"pass_at_k": m}}], "by_task", "task")
    assert "pass@1 by task" in page and "<th>code</th><th>sums</th>" in page


# ---------------------------------------------------------------------------------------------------------------------
# Quotas: at most the cap per task and per level, each prompt's best first, a subset of the strategy's selection


def quota_rows(rng: random.Random, n_prompts: int, k: int) -> list[dict]:
    rows = []
    for p in range(n_prompts):
        task, level = rng.choice(["a", "b", "c"]), rng.choice(["easy", "hard"])
        for i in range(k):
            rows.append(
                {
                    "prompt_id": f"p{p:03d}",
                    "sample_idx": i,
                    "prompt": f"prompt {p}",
                    "completion": f"c{p}-{i}",
                    "n_tokens": 3,
                    "truncated": False,
                    "reward": rng.randrange(4) / 2,
                    "round": 0,
                    "task": task,
                    "level": level,
                }  # fmt: skip
            )
    return rows


def selected_rows(cfg) -> list[dict]:
    folder = storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS["select"]
    return pa.concat_tables(pq.read_table(f) for f in storage.shard_files(folder)).to_pylist()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    strategy=st.sampled_from(["best_per_prompt", "top_n_per_prompt", "global_top", "threshold"]),
    task_caps=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 6), max_size=3),
    level_caps=st.dictionaries(st.sampled_from(["easy", "hard"]), st.integers(0, 6), max_size=2),
)
def test_quotas_cap_each_task_and_level_and_keep_a_subset(
    tmp_path_factory, seed: int, strategy: str, task_caps: dict, level_caps: dict
) -> None:
    tmp = tmp_path_factory.mktemp("quota")
    rng = random.Random(seed)
    rows = quota_rows(rng, rng.randrange(1, 12), 3)
    free = fake_config(tmp / "free", strategy=strategy, n=2)
    write_round(free, 0, rows)
    select(free, 0)
    everything = {(r["prompt_id"], r["sample_idx"]) for r in selected_rows(free)}
    data = fake_config(tmp / "capped", strategy=strategy, n=2).to_dict()
    data["prompts"] |= {"task_column": "task", "level_column": "level"}
    data["select"] |= {"task_quota": task_caps, "level_quota": level_caps}
    capped_cfg = config_from_dict(data)
    write_round(capped_cfg, 0, rows)
    manifest = select(capped_cfg, 0)
    kept = selected_rows(capped_cfg)
    keys = {(r["prompt_id"], r["sample_idx"]) for r in kept}
    assert keys <= everything
    label = {(r["prompt_id"], r["sample_idx"]): (r["task"], r["level"]) for r in rows}
    for task, cap in task_caps.items():
        assert sum(label[k][0] == task for k in keys) <= cap
    for level, cap in level_caps.items():
        assert sum(label[k][1] == level for k in keys) <= cap
    assert manifest["counts"].get("over_quota", 0) == len(everything) - len(keys)
    # a cap is filled, up to what the strategy offered, one row per prompt before any prompt's second
    for task, cap in task_caps.items():
        if level_caps:
            continue
        offered = [k for k in everything if label[k][0] == task]
        mine = [k for k in keys if label[k][0] == task]
        assert len(mine) == min(cap, len(offered))
        assert len({pid for pid, _ in mine}) == min(len(mine), len({pid for pid, _ in offered}))
    assert sum(manifest.get("selected_by_task", {}).values()) == len(keys)


# ---------------------------------------------------------------------------------------------------------------------
# The mix tool: splits kept, train_levels kept, ids unique, sources recorded


def source_config(tmp_path: Path, name: str, rows: list[dict], **prompts) -> Path:
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    text = {
        "experiment": {"name": name},
        "model": {"name_or_path": "unused"},
        "prompts": {"path": str(data), "id_column": "id", "answer_column": "answer", "level_column": "level"}
        | prompts,
        "score": {"reward": "correct", "extract": "last_number"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(text))
    return path


def test_mix_keeps_each_sources_split_and_train_levels(tmp_path: Path) -> None:
    sums = [
        {"id": i, "prompt": f"{i} + 1 = ?", "answer": i + 1, "level": "one" if i < 20 else "two"} for i in range(40)
    ]
    gym = [{"id": f"g{i}", "prompt": f"g {i}?", "answer": "1", "level": "gcd"} for i in range(12)]
    for i, row in enumerate(gym):
        row["split"] = "heldout" if i >= 8 else "train"
    a = source_config(tmp_path, "sums", sums, heldout_fraction=0.3, train_levels=["one"])
    b = source_config(tmp_path, "gym", gym, split_column="split")
    rows, record = mixed_problems([str(a), f"g={b}"])
    assert {r["task"] for r in rows} == {"sums", "g"} and len({r["id"] for r in rows}) == len(rows)
    # the mixed file splits as each source did: nothing held out there is trained on here
    sums_cfg = config_from_dict(json.loads(a.read_text()))
    _, held = split_prompts(sums_cfg.prompts)
    held_ids = {f"sums/{p}" for p in held["prompt_id"].to_pylist()}
    assert {r["id"] for r in rows if r["task"] == "sums" and r["split"] == "heldout"} == held_ids
    assert all(r["level"] == "one" for r in rows if r["task"] == "sums" and r["split"] == "train")
    assert sum(r["split"] == "heldout" for r in rows if r["task"] == "g") == 4
    assert record["tasks"]["g"]["score"]["reward"] == "correct" and record["tasks"]["sums"]["train_levels"] == ["one"]
    # read back as a mixed experiment: the task column and the split come through
    mixed = config_from_dict(
        {
            "experiment": {"name": "m"},
            "model": {"name_or_path": "unused"},
            "prompts": {"path": str(write_jsonl(tmp_path / "mixed.jsonl", rows)), **MIXED_PROMPTS},
            "score": {"reward": "correct", "tasks": {"sums": {}, "g": {}}},
        }
    )
    train, heldout = split_prompts(mixed.prompts)
    assert set(train["task"].to_pylist()) == {"sums", "g"} and heldout.num_rows == len(held_ids) + 4


def test_mix_cli_errors_are_one_line(tmp_path: Path) -> None:
    a = source_config(tmp_path, "sums", [{"id": 1, "prompt": "1 + 1", "answer": 2, "level": "one"}] * 1)
    for argv, want in (
        ([f"--from={a}", f"--from={a}"], "is given twice"),
        ([f"--from=bad name={a}"], "the task name 'bad name'"),
        ([f"--from={tmp_path / 'none.yaml'}"], "none.yaml"),
        ([f"--from={a}", "--n-train=0"], "--n-train=0"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "raft_data", "mix", *argv, "--out", str(tmp_path / "o.jsonl")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2, done.stderr
        assert want in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------------
# A round on a mixed set with the tiny model: routed scores, a task quota, pass@k per task in score and eval


def test_a_round_on_a_mixed_set(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed_rows(9))
    human = write_jsonl(
        tmp_path / "human.jsonl", [{"text": f"A film about {w} that moves slowly."} for w in "abcdefgh"]
    )
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        path,
        prompts=MIXED_PROMPTS | {"n_prompts": 12},
        generate={"n_samples": 2, "max_new_tokens": 4, "n_shards": 2},
        score={"reward": "correct", "tasks": ARITH_TASKS},
        select={"strategy": "top_n_per_prompt", "n": 2, "task_quota": {"words": 3}},
        eval={"n_prompts": 6, "n_samples": 2, "reference_file": str(human), "reference_column": "text"},
    )
    generate(cfg, 0)
    manifest = score(cfg, 0)
    assert manifest["components"] == ["correct", "length"]
    assert set(manifest["pass_at_k"]["by_task"]) == {"sums", "words"}
    samples = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples"))
    scores = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(storage.round_dir(cfg, 0) / "scores"))
    for task, got_correct, got_length in zip(
        samples["task"].to_pylist(), scores["correct"].to_pylist(), scores["length"].to_pylist(), strict=True
    ):
        assert (got_correct is None) == (task == "words") and (got_length is None) == (task == "sums")
    chosen = select(cfg, 0)
    assert chosen["selected_by_task"]["words"] == 3 and chosen["counts"]["over_quota"] == 12 - 3
    assert set(chosen["acceptance_by_task"]) == {"sums", "words"}
    baseline = evaluate_model(cfg, None)
    assert set(baseline["metrics"]["pass_at_k"]["by_task"]) == {"sums"}  # words has no checker: no pass@k
    # perplexity of the reference file's human text: the damage check of tasks whose prompts carry none
    assert baseline["metrics"]["perplexity"] > 1 and baseline["metrics"]["ppl_ratio"] == 1.0


def test_reference_file_needs_enough_texts_and_no_replay(tmp_path: Path) -> None:
    from raft_data.data.prompts import eval_prompts
    from raft_data.data.replay import replay_references

    path = write_jsonl(tmp_path / "mixed.jsonl", mixed_rows(9))
    human = write_jsonl(tmp_path / "human.jsonl", [{"text": "one text"}, {"text": " "}, {"text": "two"}])
    cfg = make_config(
        tmp_path,
        tmp_path,
        path,
        prompts=MIXED_PROMPTS,
        score={"reward": "correct", "tasks": ARITH_TASKS},
        eval={"n_prompts": 6, "reference_file": str(human), "reference_column": "text"},
        rounds={"replay_fraction": 0.5},
    )
    with pytest.raises(DataError, match="has 2 texts in column 'text', fewer than the 6 eval prompts"):
        eval_prompts(cfg)
    with pytest.raises(ConfigError, match="eval.reference_file="):
        replay_references(cfg)
    with pytest.raises(ConfigError, match="eval.reference_file='h.jsonl' is invalid"):
        config_from_dict(cfg.to_dict() | {"eval": {"reference_file": "h.jsonl"}})
