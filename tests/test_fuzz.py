"""Fuzzing the contract of every command with inputs drawn at random, valid and invalid: configs and overrides,
sweep grid files, prompt files (written right, or damaged afterwards), reward outputs, answers for the checkers and
SFT settings. Whatever is drawn, a command exits 0 with a complete result, or exits 2 with one line on stderr and no
traceback, and changes nothing finished; a file written right is read as it was written.

`make test` runs a few examples of each (the `default` profile); `make fuzz` runs them again and again with the
`fuzz` profile (HYPOTHESIS_PROFILE=fuzz) for FUZZ_MINUTES. A class of bug this finds gets a named regression test in
tests/test_hostile.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.cli.sft import main as raft_sft
from raft_data.config import SECTIONS, ScoreConfig, config_from_dict, read_yaml
from raft_data.errors import ConfigError, DataError
from raft_data.rewards.checkers import checker_reward
from raft_data.rewards.loading import MAX_REWARD, reward_values
from raft_data.stages.generate import generate

from . import hostile_rewards
from .conftest import make_config
from .test_bad_inputs import tree as finished

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)
SCALE = 40 if PROFILE == "fuzz" else 1  # examples per test: `make test` n, `make fuzz` 40 n per run


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE)


PROGRESS = re.compile(r"\d+%\||examples/s\]|it/s\]")


def is_progress(line: str) -> bool:
    """A progress bar drawn on stderr (the error line itself may echo a value that looks like one)."""
    return not line.startswith("error: ") and PROGRESS.search(line) is not None


def run(argv: list[str], sft: bool = False) -> tuple[int, str, str]:
    """A command in this process: (exit status, stdout, stderr without progress bars). Anything but a clean exit
    or SystemExit propagates, and fails the test with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            (raft_sft if sft else raft_data)(argv)
        except SystemExit as e:
            code = e.code
    lines = [line for line in err.getvalue().splitlines() if line.strip() and not is_progress(line)]
    return code, out.getvalue(), "\n".join(lines)


def assert_contract(code: Any, err: str) -> None:
    """Exit 0, or exit 2 with exactly one line that starts with `error: `; never a traceback."""
    assert "Traceback" not in err, err
    assert code in (0, None, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 0 and err.startswith("error: "), err


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_model_dir) -> dict[str, Any]:
    """A working folder with a good config (the tiny model, 12 prompts) that the examples vary."""
    root = tmp_path_factory.mktemp("fuzz")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Prompt number {i}"}) + "\n" for i in range(12)))
    cfg = make_config(
        root,
        tiny_model_dir,
        prompts,
        prompts={"n_prompts": 4},
        generate={"n_samples": 2, "max_new_tokens": 4, "n_shards": 2},
        sft={"max_steps": 1},
    )
    config = root / "good.yaml"
    config.write_text(cfg.to_yaml())
    return {"root": root, "cfg": cfg, "config": config, "data": cfg.to_dict()}


# ---------------------------------------------------------------------------------------------------------------------
# Values, configs, overrides, YAML text

TRICKY_TEXT = [
    "",
    " ",
    "auto",
    "cpu",
    "cuda",
    "..",
    ".",
    "a/b",
    "x" * 300,
    "runs/\x00x",
    "vader",
    "correct",
    "length",
    "tests.hostile_rewards:exits",
    "tests.hostile_rewards:huge_int",
    "../../x:y",
    "os:system",
    "custom",
    "regex",
    "best_per_prompt",
    "random_per_prompt",
    "messages",
    "pairs",
    "stop",
    "rollback",
    "offline",
    "base",
    "\ufeffid",
    "é" * 100,
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=70),
    st.integers(),
    st.sampled_from([2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**30, -(2**64), 10**400]),
    st.floats(),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 1e10, -1.0, 0.5, float("nan"), float("inf")]),
    st.text(max_size=20),
    st.sampled_from(TRICKY_TEXT),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [(s, f) for s, cls in SECTIONS.items() for f in cls.__dataclass_fields__] + [
    ("sft", f) for f in ("learning_rate", "seed", "max_steps", "num_train_epochs", "per_device_train_batch_size")
]
setting = st.one_of(
    st.sampled_from(FIELDS), st.tuples(st.sampled_from([*SECTIONS, "sft", "nope"]), st.text(max_size=10))
)


def flow(value: Any) -> str:
    """`value` as one line of YAML (what an override's value is)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...").strip()


@st.composite
def alias_bomb(draw) -> str:
    """Anchors that name lists of aliases to the anchor before: small to write, huge to expand (or not)."""
    fan, levels = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    lines = [f"b0: &b0 [{', '.join(['lol'] * fan)}]"]
    lines += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


@st.composite
def nested(draw) -> str:
    depth = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["[]", "{}", "mixed"]))
    if kind == "[]":
        return "[" * depth + "]" * depth
    if kind == "{}":
        return "{a: " * depth + "1" + "}" * depth
    return "[{a: " * depth + "1" + "}]" * depth


yaml_noise = st.text(alphabet=st.sampled_from(list("ab1:- []{}&*!|>'\"#%@`\n\t,?.<=~\\")), max_size=80)
hostile_value_text = st.one_of(alias_bomb(), nested(), yaml_noise, st.builds(flow, values))


def config_text_and_overrides(base: dict[str, Any], draw) -> tuple[str, list[str]]:
    data = json.loads(json.dumps(base, default=str))
    overrides: list[str] = []
    for section, key in draw(st.lists(setting, max_size=4)):
        value = draw(values)
        if draw(st.booleans()):
            if section not in data or not isinstance(data[section], dict):
                data[section] = {}
            data[section][key] = value
        else:
            text = draw(hostile_value_text) if draw(st.integers(0, 9)) == 0 else flow(value)
            overrides.append(f"{section}.{key}={text}")
    whole = draw(st.integers(0, 19))
    if whole == 0:
        return draw(st.one_of(alias_bomb(), nested(), yaml_noise)), overrides
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))
    if whole == 1:
        text += "\n" + draw(alias_bomb())
    return text, overrides


@given(data=st.data())
@examples(40)
def test_config_command_prints_a_config_that_loads_back_or_one_line(space, data) -> None:
    """`raft-data config` on a drawn config and overrides: exit 0 and a printed config that loads back to itself,
    or exit 2 and one line. And `raft-sft train` on the same input refuses it with one line too (its sft section is
    checked first; with a good one it needs a selected set that round 99 does not have)."""
    text, overrides = config_text_and_overrides(space["data"], data.draw)
    path = space["root"] / "drawn.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run(["config", "--config", str(path), *overrides])
    assert_contract(code, err)
    if code in (0, None):
        printed = read_yaml(out)
        assert config_from_dict(printed).to_dict() == printed
    code, _, err = run(["train", "--config", str(path), "--round", "99", *overrides], sft=True)
    assert_contract(code, err)
    assert code == 2


@given(data=st.data())
@examples(15)
def test_every_stage_refuses_a_bad_config_before_it_writes(space, data) -> None:
    """A drawn config that `raft-data config` refuses is refused by every stage with one line, before it writes."""
    text, overrides = config_text_and_overrides(space["data"], data.draw)
    path = space["root"] / "drawn-stage.yaml"
    path.write_text(text, encoding="utf-8")
    code, _, _ = run(["config", "--config", str(path), *overrides])
    assume(code == 2)
    before = finished(space["root"])
    command = data.draw(st.sampled_from(["generate", "score", "select", "eval", "status", "prompts", "inspect"]))
    code, _, err = run([command, "--config", str(path), "--round", "98", *overrides])
    assert_contract(code, err)
    assert code == 2 and finished(space["root"]) == before
    assert not (space["root"] / "runs" / space["cfg"].experiment.name / "round-0098").exists()


@given(data=st.data())
@examples(25)
def test_grid_files_are_read_within_limits_or_refused_with_one_line(space, data) -> None:
    grid: dict[str, Any] = {"n_rounds": data.draw(st.one_of(st.integers(-2, 3), values))}
    names = st.one_of(st.text(max_size=12), st.sampled_from(["a", "lr-1", "v" * 64, "v" * 65, "v" * 300, ".."]))
    override = st.builds(lambda key, value: f"{key[0]}.{key[1]}={flow(value)}", setting, values)
    overrides = st.lists(st.one_of(st.text(max_size=30), override), max_size=3)
    variants = st.dictionaries(names, st.one_of(st.none(), overrides), max_size=3)
    grid["variants"] = data.draw(st.one_of(variants, values))
    if data.draw(st.booleans()):
        grid[data.draw(st.text(max_size=6))] = data.draw(values)
    text = yaml.safe_dump(grid, sort_keys=False) if data.draw(st.integers(0, 4)) else data.draw(hostile_value_text)
    path = space["root"] / "grid.yaml"
    path.write_text(text, encoding="utf-8")
    out = space["root"] / "sweep-page"
    code, _, err = run(["sweep", "--config", str(space["config"]), "--grid", str(path), "--no-run", "--out", str(out)])
    assert_contract(code, err)


# ---------------------------------------------------------------------------------------------------------------------
# Prompt files: written right and read as written (or refused for what they hold), or damaged and refused

ids = st.one_of(
    st.sampled_from(["a", "b", "c", "1", "p 1", " "]), st.integers(-3, 3), st.booleans(), st.none(), st.floats()
)
prompt_texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "  ", 'say "hi", then go', "two\nlines", "tab\there", "a,b,c", "\ufeffBOM inside", "é😀"]),
    st.integers(),
    st.none(),
)
answers = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["", " ", "42", "0.5", "1/2"]),
    st.lists(st.integers(), max_size=2),
)


def as_cell(value: Any, fmt: str) -> Any:
    """A value as the file holds it: CSV cells are text (None an empty field)."""
    if fmt != "csv":
        return value
    return "" if value is None else str(value)


def expected_prompts(rows: list[dict[str, Any]], with_answers: bool) -> list[tuple[str, str]] | None:
    """What reading `rows` must give, (prompt_id, prompt) in source order, or None where it must be refused."""
    first: dict[str, tuple] = {}
    out = []
    for row in rows:
        text, pid, answer = row["prompt"], row["id"], row.get("answer")
        if not isinstance(text, str):
            return None
        if not text.strip():
            continue
        if not ((isinstance(pid, str) and pid.strip()) or (isinstance(pid, int) and not isinstance(pid, bool))):
            return None
        gold = None
        if with_answers:
            if answer is None or (isinstance(answer, str) and not answer.strip()):
                return None
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                return None
            if isinstance(answer, float) and not math.isfinite(answer):
                return None
            gold = str(answer).strip()
        key = str(pid)
        if key in first:
            if first[key] != (text, gold):
                return None
            continue
        first[key] = (text, gold)
        out.append((key, text))
    return out or None


def write_prompts(path: Path, rows: list[dict[str, Any]], fmt: str, bom: bool) -> bool:
    """Write `rows` in `fmt`; False when the format cannot hold them (a Parquet column of mixed types)."""
    columns = list(rows[0]) if rows else ["id", "prompt"]
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([[r[c] for c in columns] for r in rows])
    else:
        try:
            table = pa.table({c: [r[c] for r in rows] for c in columns})
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return False
        pq.write_table(table, path)
    return True


@st.composite
def damage(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "garbage", "quote", "empty"]))
    if kind == "empty" or not data:
        return b""
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if kind == "quote":
        return data[:at] + b'"' + data[at:]
    return draw(st.binary(max_size=64))


@given(data=st.data())
@examples(60)
def test_prompt_files_are_read_as_written_or_refused_with_one_line(space, data) -> None:
    fmt = data.draw(st.sampled_from(["jsonl", "csv", "parquet"]))
    with_answers = data.draw(st.booleans())
    n_rows = data.draw(st.integers(0, 6))
    rows = []
    for _ in range(n_rows):
        row = {"id": data.draw(ids), "prompt": data.draw(prompt_texts)}
        if with_answers:
            row["answer"] = data.draw(answers)
        rows.append({k: as_cell(v, fmt) for k, v in row.items()})
    path = space["root"] / f"drawn-prompts.{fmt}"
    bom = fmt != "parquet" and data.draw(st.booleans())
    assume(write_prompts(path, rows, fmt, bom))
    damaged = data.draw(st.integers(0, 3)) == 0
    if damaged:
        path.write_bytes(data.draw(damage(path.read_bytes())))
    argv = ["prompts", "--config", str(space["config"]), f"prompts.path={path}", "prompts.n_prompts=100"]
    if with_answers:
        argv.append("prompts.answer_column=answer")
    code, out, err = run(argv)
    assert_contract(code, err)
    if damaged:
        return
    if fmt == "jsonl" and any(isinstance(v, float) and not math.isfinite(v) for r in rows for v in r.values()):
        assert code == 2  # JSON has no NaN or infinity: json.dumps wrote a file that is not JSON
        return
    if fmt == "parquet":  # a column holds one type (ints may have become floats): compare with what it holds
        rows = pq.read_table(path).to_pylist()
    expected = expected_prompts(rows, with_answers)
    if expected is None:
        assert code == 2, (rows, out)
    else:
        assert code in (0, None), (rows, err)
        assert out == "".join(f"{pid}\t{text}\n" for pid, text in expected)


# ---------------------------------------------------------------------------------------------------------------------
# Rewards: whatever a reward returns or raises, the values are finite numbers, one per completion, or one error


class Weird:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __float__(self) -> float:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value

    def __repr__(self) -> str:
        raise ValueError("no repr")


reward_items = st.one_of(
    scalars,
    st.floats(allow_nan=True),
    st.builds(np.float32, st.floats(width=32)),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.builds(np.bool_, st.booleans()),
    st.builds(lambda xs: np.array(xs), st.lists(st.floats(-10, 10), max_size=2)),
    st.builds(Weird, st.one_of(st.floats(), st.sampled_from([SystemExit(0), KeyboardInterrupt(), ValueError("x")]))),
    st.lists(st.floats(), max_size=2),
)
raised = st.sampled_from(
    [SystemExit(0), SystemExit(1), KeyboardInterrupt(), GeneratorExit(), ValueError(), MemoryError()]
)


@given(n=st.integers(1, 5), data=st.data())
@examples(150)
def test_reward_values_are_finite_numbers_one_per_completion_or_one_error(n, data) -> None:
    outcome = data.draw(
        st.one_of(
            st.lists(reward_items, min_size=n, max_size=n),
            st.lists(reward_items, max_size=7),
            reward_items,
            st.builds(np.array, st.lists(st.floats(), min_size=n, max_size=n)),
            raised,
        )
    )

    def reward(prompts: list[str], completions: list[str]) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    try:
        got = reward_values("drawn", reward, ["p"] * n, ["c"] * n, lambda i: f"row {i}")
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith("reward 'drawn' ")
        return
    assert len(got) == n and all(type(v) is float and math.isfinite(v) and abs(v) <= MAX_REWARD for v in got)
    assert got == [float(v) for v in list(outcome)]


@pytest.fixture(scope="module")
def sampled(space) -> Path:
    """Round 0's samples of the good config, generated once; each example scores a copy."""
    generate(space["cfg"], 0)
    return storage.round_dir(space["cfg"], 0)


@given(data=st.data())
@examples(12)
def test_score_with_any_reward_output_finishes_or_leaves_nothing_half_written(space, sampled, data) -> None:
    name = f"score-{data.draw(st.integers(0, 10**9))}"
    rdir = space["root"] / "runs" / name / "round-0000"
    shutil.rmtree(rdir.parent, ignore_errors=True)
    rdir.mkdir(parents=True)
    shutil.copytree(sampled / "samples", rdir / "samples")
    shutil.copy(sampled / "prompts.parquet", rdir / "prompts.parquet")
    before = finished(rdir)
    hostile_rewards.SCRIPT["value"] = data.draw(
        st.one_of(
            st.builds(lambda items: lambda n: (items * n)[:n], st.lists(reward_items, min_size=1, max_size=3)),
            st.lists(reward_items, max_size=8),
            reward_items,
            raised,
        )
    )
    argv = ["score", "--config", str(space["config"]), f"experiment.name={name}"]
    code, _, err = run([*argv, "score.reward=tests.hostile_rewards:scripted"])
    assert_contract(code, err)
    assert {k: v for k, v in finished(rdir).items() if k.startswith("samples")} == before
    scores = rdir / "scores"
    if code == 2:
        assert not (scores / "manifest.json").exists()
        code, _, err = run(argv)  # the corrected rerun: the config's reward
        assert code in (0, None), err
    rewards = pa.concat_tables([pq.read_table(f) for f in storage.shard_files(scores)])["reward"].to_pylist()
    assert (scores / "manifest.json").exists() and all(math.isfinite(r) for r in rewards)


# ---------------------------------------------------------------------------------------------------------------------
# Checkers: any completion and any gold answer is scored 0 or 1, never an error

numberish = st.one_of(
    st.integers().map(str),
    st.sampled_from(["9" * 400, "1e999999999", "1/0", "0/0", "\\frac{1}{0}", "1,000", "-0", "+3", ".5", "5.", "٣"]),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.fractions().map(str),
)
completions = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, b: f"{a} {b}", st.text(max_size=20), numberish),
    st.builds(lambda a: f"\\boxed{{{a}}}", numberish),
    st.builds(lambda a: f"Answer: {a}", numberish),
    st.sampled_from(["\\boxed{", "\\boxed{{}", "\\fbox{x}", "Answer:", "answer is = "]),
)
REGEXES = [r"(\d+)!|none", r"(a)?(b)?", r"=\s*(-?\d+)", r"\d+", r"(x)|(y)", r"()"]


@given(
    completion=st.lists(completions, min_size=1, max_size=4),
    gold=st.one_of(numberish, st.text(max_size=10)),
    extract=st.sampled_from(["last_number", "boxed", "answer_line", "regex"]),
    match=st.sampled_from(["exact", "numeric"]),
    regex=st.sampled_from(REGEXES),
    tolerance=st.sampled_from([0.0, 1e-6, 0.5]),
)
@examples(150)
def test_checkers_score_any_completion_zero_or_one(completion, gold, extract, match, regex, tolerance) -> None:
    cfg = ScoreConfig(
        reward="correct",
        extract=extract,
        extract_regex=regex if extract == "regex" else None,
        match=match,
        tolerance=tolerance,
    )
    for name in ("correct", "format"):
        fn = checker_reward(name, cfg)
        got = fn([""] * len(completion), completion, [gold] * len(completion))
        assert len(got) == len(completion) and set(got) <= {0.0, 1.0}
    if extract == "last_number" and re.fullmatch(r"-?\d{1,50}", gold):
        fn = checker_reward("correct", cfg)
        assert fn([""], [f"so the answer is {gold}."], [gold]) == [1.0]


# ---------------------------------------------------------------------------------------------------------------------
# SFT settings: TRL's SFTConfig is built from any drawn sft section, or the section is refused with one line


@given(data=st.data())
@examples(40)
def test_sft_settings_build_an_sft_config_or_are_refused(space, data) -> None:
    """Any drawn sft section either builds TRL's SFTConfig with the numbers as given, or is one ConfigError."""
    import dataclasses

    from trl import SFTConfig

    from raft_sft.train import sft_args

    defaults = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    numeric = [k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    keys = st.one_of(st.sampled_from(numeric), st.sampled_from(sorted(defaults)), st.text(max_size=6))
    sft = data.draw(st.dictionaries(keys, values, max_size=4))
    try:
        cfg = config_from_dict({**space["data"], "sft": sft})
        args = sft_args(cfg, space["root"] / "sft-out", on_cpu=True)
    except ConfigError as e:  # the command line prints it as one line (test_config_command_...)
        assert "sft" in str(e)
        return
    assert isinstance(args, SFTConfig)
    for key, value in sft.items():
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
        if key in numeric and key not in ("use_cpu", "seed") and isinstance(value, (int, float)):
            assert getattr(args, key) == value, (key, value, getattr(args, key))
