"""Hostile inputs and runs that go wrong, one named test per class: inputs that explode, files that are not what
they claim, training that diverges, settings that can never work, answers that are not answers, rewards that
misbehave, names the file system refuses. Each must end in exit status 2 and one line that names the file, field or
value (or be handled correctly), leave every finished artifact as it was, and never block the corrected rerun.
tests/test_fuzz.py draws such inputs at random; these are the named cases it stands beside."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.cli.sft import main as raft_sft
from raft_data.config import ScoreConfig
from raft_data.config.loader import MAX_YAML_DEPTH, MAX_YAML_SIZE
from raft_data.data.readers import MAX_DEPTH, MAX_FIELD_CHARS
from raft_data.errors import DataError, ModelLoadError
from raft_data.models.checks import check_finite_weights
from raft_data.rewards.checkers import checker_reward
from raft_data.rewards.loading import reward_values
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select

from .conftest import ROOT, make_config
from .test_bad_inputs import tree as finished

SMALL = {
    "prompts": {"n_prompts": 6},
    "generate": {"n_samples": 2, "max_new_tokens": 6, "n_shards": 2},
    "sft": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 32, "learning_rate": 1e-3},
}


PROGRESS = re.compile(r"\d+%\||examples/s\]|it/s\]")  # progress bars, drawn on stderr before an error


def is_progress(line: str) -> bool:
    """A progress bar drawn on stderr (the error line itself may echo a value that looks like one)."""
    return not line.startswith("error: ") and PROGRESS.search(line) is not None


def one_line(argv: list[str], capsys, runs: Path | None = None, sft: bool = False) -> str:
    """Run a command in this process: exit status 2, exactly one line on stderr and no traceback, and no finished
    artifact under `runs` changed. Returns the line."""
    before = finished(runs) if runs else {}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        (raft_sft if sft else raft_data)(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not is_progress(line)]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    if runs:
        assert finished(runs) == before
    return lines[0]


@pytest.fixture
def world(tmp_path: Path, tiny_model_dir: Path, prompts_file: Path):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SMALL)
    config = tmp_path / "good.yaml"
    config.write_text(cfg.to_yaml())
    return cfg, config


# ---------------------------------------------------------------------------------------------------------------------
# Inputs that explode: YAML with aliases, nesting, sizes past the limits, in every place YAML is read


def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    lines = ["m0: &m0 {a: 1, b: 2}"] + [
        f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}" for i in range(1, levels)
    ]
    return "\n".join(lines) + "\n"


def billion_laughs_in_one_line(levels: int = 9) -> str:
    """The same in flow style: one line, as an override's value can be."""
    items = [f"&a0 [{', '.join(['lol'] * 10)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return f"[{', '.join(items)}]"


HOSTILE_YAML = {
    "billion-laughs": (billion_laughs(), f"more than {MAX_YAML_SIZE:,} items"),
    "billion-laughs-in-one-line": (billion_laughs_in_one_line(), f"more than {MAX_YAML_SIZE:,} items"),
    "merge-keys": (merge_bomb(), f"more than {MAX_YAML_SIZE:,} items"),
    "nested-20000": ("[" * 20000 + "]" * 20000, f"more than {MAX_YAML_DEPTH} collections deep"),
    "self-alias": ("&a [*a]", "an alias stands inside the collection it names"),
    "5000-digits": ("9" * 5000, "4300 digits"),
    "impossible-date": ("2021-02-30", "day is out of range"),
    "list-key": ("{? [a]: b}", "a key is a list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_refused_in_config_files_overrides_and_grid_files(case, world, tmp_path, capsys) -> None:
    cfg, config = world
    text, fragment = HOSTILE_YAML[case]
    indented = "\n".join("    " + line for line in text.splitlines())
    in_file = tmp_path / "hostile.yaml"
    in_file.write_text(config.read_text().replace("sft:\n", f"sft:\n  bomb:\n{indented}\n", 1))
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"n_rounds: 1\nvariants:\n  a: []\nbomb:\n{indented}\n")
    runs = tmp_path / "runs"
    line = one_line(["config", "--config", str(in_file)], capsys, runs)
    assert str(in_file) in line and fragment in line
    for command in ("generate", "score", "select", "eval", "status"):
        assert fragment in one_line([command, "--config", str(in_file)], capsys, runs)
    assert fragment in one_line(["train", "--config", str(in_file)], capsys, runs, sft=True)
    if "\n" not in text.strip():  # a one-line document is also an override's value
        line = one_line(["config", "--config", str(config), f"sft.bomb={text}"], capsys, runs)
        assert "override sft.bomb" in line and fragment in line
    line = one_line(["sweep", "--config", str(config), "--grid", str(grid), "--no-run"], capsys, runs)
    assert str(grid) in line and fragment in line


def test_billion_laughs_stays_far_below_a_gigabyte(world, tmp_path) -> None:
    """`raft-data config` on a billion-laughs file: refused, and the process's peak memory stays far below 1 GB
    (the expansion is counted while the YAML is read, never built)."""
    _, config = world
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(config.read_text() + billion_laughs(12).replace("a0:", "x0:"))
    rss_file = tmp_path / "rss"
    # VmHWM: this process's peak resident memory (ru_maxrss would count the forked test process's too)
    code = (
        "import re, sys\nfrom raft_data.cli.main import main\ntry:\n    main(sys.argv[2:])\nfinally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    open(sys.argv[1], 'w').write(re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(rss_file), "config", "--config", str(bomb)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "expands to more than" in proc.stderr
    peak_kib = int(rss_file.read_text())
    assert peak_kib < 512 * 1024, f"peak RSS {peak_kib} KiB"


def test_a_config_file_past_the_size_limit_or_not_a_file_is_one_line(world, tmp_path, capsys) -> None:
    _, config = world
    big = tmp_path / "big.yaml"
    big.write_text(config.read_text() + "# " + "x" * (1 << 20) + "\n")
    assert "larger than the limit of 1,048,576 bytes" in one_line(["config", "--config", str(big)], capsys)
    assert "is not a file" in one_line(["config", "--config", str(tmp_path)], capsys)
    long_name = str(tmp_path / ("x" * 300 + ".yaml"))
    assert "cannot be read: File name too long" in one_line(["config", "--config", long_name], capsys)


# ---------------------------------------------------------------------------------------------------------------------
# Prompt files that explode or are not what they claim: refused with one line, or read as they are


def write_csv(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def prompt_lines(capsys, config: Path, path: Path, *overrides: str) -> list[str]:
    capsys.readouterr()
    raft_data(["prompts", "--config", str(config), f"prompts.path={path}", "prompts.n_prompts=100", *overrides])
    return capsys.readouterr().out.splitlines()


def test_prompt_files_that_explode_or_lie_are_one_line(world, tmp_path, capsys) -> None:
    _, config = world
    runs = tmp_path / "runs"
    cases = {
        "deep.jsonl": (
            '{"id": "a", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
            f"more than {MAX_DEPTH} deep",
        ),
        "wide.csv": ('id,prompt\n1,"' + "x" * (MAX_FIELD_CHARS + 1) + '"\n', f"longer than {MAX_FIELD_CHARS:,}"),
        "unclosed.csv": ('id,prompt\np1,"an open quote\np2,and more\n', "line 2 is not valid CSV"),
        "quote-in-field.csv": ('id,prompt\np1,"a" b\n', "line 2 is not valid CSV"),
        "ragged.csv": ("id,prompt\np1,a,b\n", "line 2 has 3 fields, the header 2"),
        "empty.csv": ("", "is empty"),
        "zero.parquet": (b"", "is not a readable Parquet file"),
        "garbage.parquet": (b"PAR1" + bytes(range(256)) * 8, "is not a readable Parquet file"),
        "key-twice.jsonl": ('{"id": "a", "prompt": "x", "prompt": "y"}\n', "key 'prompt' is written twice"),
        "nan.jsonl": ('{"id": "a", "prompt": "x", "answer": NaN}\n', "NaN is not a JSON number"),
        "surrogate.jsonl": ('{"id": "a", "prompt": "\\ud800"}\n', "not valid Unicode"),
        "bool-id.jsonl": ('{"id": true, "prompt": "x"}\n', "a prompt id is text or an integer"),
    }
    for name, (content, fragment) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        line = one_line(["prompts", "--config", str(config), f"prompts.path={path}"], capsys, runs)
        assert str(path) in line and fragment in line, (name, line)


def test_a_long_csv_field_and_a_byte_order_mark_are_read_as_they_are(world, tmp_path, capsys) -> None:
    _, config = world
    long_text = "A review that goes on, " * 9000  # about 200,000 characters: over csv's default field limit
    path = write_csv(tmp_path / "long.csv", [["id", "prompt"], ["p1", long_text], ["p2", "short, with a comma"]])
    assert prompt_lines(capsys, config, path) == [f"p1\t{long_text}", "p2\tshort, with a comma"]
    bom = write_csv(tmp_path / "bom.csv", [["id", "prompt"], ["p1", 'say "hi"'], ["p2", "two\nlines"]], bom=True)
    assert bom.read_bytes().startswith(b"\xef\xbb\xbfid,")
    assert prompt_lines(capsys, config, bom) == ['p1\tsay "hi"', "p2\ttwo", "lines"]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "p1", "prompt": "first"}).encode() + b"\n")
    assert prompt_lines(capsys, config, jsonl) == ["p1\tfirst"]


def test_answers_must_be_text_or_numbers_and_one_id_has_one_answer(world, tmp_path, capsys) -> None:
    _, config = world
    answers = ["prompts.answer_column=answer"]

    def jsonl(name: str, rows: list[dict]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    cases = {
        "bool": ([{"id": "a", "prompt": "2+2?", "answer": True}], "is True: expected text or a number"),
        "list": ([{"id": "a", "prompt": "2+2?", "answer": [4]}], "is [4]: expected text or a number"),
        "two-answers": (
            [{"id": "a", "prompt": "2+2?", "answer": "4"}, {"id": "a", "prompt": "2+2?", "answer": "5"}],
            "id='a' is given twice (rows 0 and 1) with two different answers: '4' and '5'",
        ),
        "two-answers-no-id": (
            [{"id": "a", "prompt": "2+2?", "answer": 4}, {"id": "b", "prompt": "2+2?", "answer": 5}],
            "with two different answers",
        ),
    }
    for name, (rows, fragment) in cases.items():
        overrides = [*answers] if name != "two-answers-no-id" else [*answers, "prompts.id_column=null"]
        path = jsonl(f"{name}.jsonl", rows)
        argv = ["prompts", "--config", str(config), f"prompts.path={path}", *overrides]
        assert fragment in one_line(argv, capsys), name
    same = jsonl(
        "same.jsonl", [{"id": "a", "prompt": "2+2?", "answer": 4}, {"id": "a", "prompt": "2+2?", "answer": 4}]
    )
    assert prompt_lines(capsys, config, same, *answers) == ["a\t2+2?"]


def test_checkers_score_what_they_cannot_read_as_incorrect_and_count_it() -> None:
    huge = "9" * 400
    correct = checker_reward("correct", ScoreConfig(reward="correct"))
    completions = [f"The answer is {huge}.", f"The answer is {huge}8.", "1e999999999", "no number", "3/0"]
    assert correct([""] * 5, completions, [huge, huge, "1e999999999", "4", "3"]) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert correct.counts["no_answer"] == 1
    regex = checker_reward("correct", ScoreConfig(reward="correct", extract="regex", extract_regex=r"(\d+)!|none"))
    assert regex(["", ""], ["none of it", "7!"], ["7", "7"]) == [0.0, 1.0]  # a group that took no part: no answer
    assert regex.counts["no_answer"] == 1

    def broken(extracted: str, gold: str) -> bool:
        raise OverflowError("int too large to convert to float")

    import raft_data.rewards.checkers as checkers

    real = checkers.matcher
    checkers.matcher = lambda cfg: broken  # a comparison that fails is an incorrect answer, counted
    try:
        failing = checker_reward("correct", ScoreConfig(reward="correct"))
    finally:
        checkers.matcher = real
    assert failing(["", ""], ["7", "8"], ["7", "8"]) == [0.0, 0.0]
    assert failing.counts["not_comparable"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# Settings that can never work or never hold: refused by `raft-data config` and every stage, before anything loads


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("rounds.max_ppl_ratio=-1", "rounds.max_ppl_ratio=-1.0 is invalid: expected a number > 0"),
        ("rounds.max_kl_per_token=-0.5", "rounds.max_kl_per_token=-0.5 is invalid"),
        ("rounds.max_kl_per_token=.nan", "rounds.max_kl_per_token=nan"),
        ("generate.max_new_tokens=1000000000", "generate.max_new_tokens=1000000000 is invalid"),
        ("eval.max_new_tokens=1000000000", "eval.max_new_tokens=1000000000 is invalid"),
        ("lora.r=1000000000", "lora.r=1000000000 is invalid"),
        ("experiment.seed=-1", "experiment.seed=-1 is invalid: expected an integer in [0, 4,294,967,295]"),
        ("experiment.seed=18446744073709551616", "experiment.seed=18446744073709551616 is invalid"),
        ("generate.adaptive_target=2", "adaptive sampling counts correct samples"),
        ("generate.n_shards=1000000000", "generate.n_shards=1000000000 is invalid"),
        ("generate.n_samples=100000000", "generate.n_samples=100000000 is invalid"),
        ("generate.api_timeout_s=.inf", "generate.api_timeout_s=inf is invalid"),
        ("generate.api_backoff_s=1e308", "generate.api_backoff_s=1e+308 is invalid"),
        ("score.reward=../../x:y", "score.reward='../../x:y' is invalid"),
        ("score.reward=[{ref: ../x:y}]", "score.reward[0].ref='../x:y' is invalid"),
        ("score.reward=[{ref: vader, weight: 1e300}]", "score.reward[0].weight=1e+300 is invalid"),
        ("eval.second_reward=/tmp/x.py:f", "eval.second_reward='/tmp/x.py:f' is invalid"),
        ("experiment.name=" + "n" * 300, "at most 128 bytes"),
        ("prompts.path=" + "p" * 300 + ".jsonl", "no part longer than 255 bytes"),
        ("experiment.output_root=runs/a\x00b", "no NUL character"),
        ("generate.temperature=1e400", "generate.temperature=inf"),
        (f"score.reward=[{{ref: vader, weight: {10**400}}}]", "weight=an integer of about 400 digits is invalid"),
        (f"rounds.epsilon={10**400}", "rounds.epsilon=an integer of about 400 digits is invalid"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_anything_loads(override, fragment, world, capsys) -> None:
    _, config = world
    assert fragment in one_line(["config", "--config", str(config), override], capsys)
    assert fragment in one_line(["generate", "--config", str(config), override], capsys)


def test_budgets_and_ranks_beyond_the_model_are_refused_before_it_loads(world, tmp_path, capsys) -> None:
    """The tiny model's context is 256 tokens and its width 32: what cannot fit is refused by every command
    that takes the config, raft-sft train included, before a model or a round folder exists."""
    _, config = world
    c = str(config)
    assert "expected at most 255: the model's context is 256" in one_line(
        ["generate", "--config", c, "generate.max_new_tokens=300"], capsys
    )
    assert "generate.max_prompt_tokens=251 is invalid: expected at most 250" in one_line(
        ["config", "--config", c, "generate.max_prompt_tokens=251", "generate.max_new_tokens=6"], capsys
    )
    assert "eval.max_new_tokens=256 is invalid" in one_line(["eval", "--config", c, "eval.max_new_tokens=256"], capsys)
    line = one_line(["train", "--config", c, "lora.r=64"], capsys, sft=True)
    assert "lora.r=64 is invalid: expected at most the model's width, 32" in line
    line = one_line(["train", "--config", c, f"sft.num_train_epochs={10**400}"], capsys, sft=True)
    assert "sft.num_train_epochs=an integer of about 400 digits is invalid: expected a number" in line
    for seed in ("-1", "4294967296"):
        assert f"sft.seed={seed} is invalid" in one_line(
            ["train", "--config", c, f"sft.seed={seed}"], capsys, sft=True
        )
    assert not (tmp_path / "runs").exists()


def test_a_variant_name_the_file_system_refuses_is_one_line(world, tmp_path, capsys) -> None:
    _, config = world
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"n_rounds: 1\nvariants:\n  {'v' * 300}: []\n")
    assert "expected 1 to 64 letters" in one_line(["sweep", "--config", str(config), "--grid", str(grid)], capsys)
    grid.write_text(f"n_rounds: 1\nvariants:\n  {'v' * 60}: []\n")
    argv = ["sweep", "--config", str(config), "--grid", str(grid), "experiment.name=" + "e" * 100]
    assert f"variant {'v' * 60}: experiment.name=" in one_line(argv, capsys)


# ---------------------------------------------------------------------------------------------------------------------
# Rewards that misbehave: one line, no manifest, and the corrected rerun runs


@pytest.mark.parametrize(
    ("reward", "fragment"),
    [
        ("exits", "raised SystemExit('0')"),
        ("raises_system_exit", "raised SystemExit('3')"),
        ("interrupted", "raised KeyboardInterrupt('')"),
        ("huge_int", "returned an integer of about 400 digits"),
        ("absurd", "returned 1e+300"),
        ("matrix", "returned array([1., 1.])"),
        ("sly", "returned a Sly"),
    ],
)
def test_a_reward_that_exits_or_returns_absurd_values_is_contained(reward, fragment, world, tmp_path, capsys) -> None:
    cfg, config = world
    generate(cfg, 0)
    runs = tmp_path / "runs"
    argv = ["score", "--config", str(config), f"score.reward=tests.hostile_rewards:{reward}"]
    line = one_line(argv, capsys, runs)
    assert f"reward {reward!r}" in line and fragment in line, line
    scores = storage.round_dir(cfg, 0) / "scores"
    assert not (scores / "manifest.json").exists() and not list(scores.glob("*.done"))
    assert score(cfg, 0)["counts"]["scores"] == 12  # the corrected rerun (the config's reward) is not blocked


def test_reward_values_contains_every_kind_of_failure() -> None:
    def row(i: int) -> str:
        return f"row {i}"

    def returning(value):
        return lambda prompts, completions: value

    for value in ([10**400], [float("inf")], ["1"], [True], [None], [[1.0]], {"a": 1}, 3.0, iter([1.0])):
        with pytest.raises(DataError, match="reward 'r' returned"):
            reward_values("r", returning(value), ["p"], ["c"], row)
    assert reward_values("r", returning([torch.tensor(0.5)]), ["p"], ["c"], row) == [0.5]


# ---------------------------------------------------------------------------------------------------------------------
# Training that diverges: nothing non-finite is published, and no stage starts from a model that is


def test_sft_that_diverges_publishes_nothing_and_the_corrected_rerun_runs(world, tmp_path, capsys) -> None:
    cfg, config = world
    for stage in (generate, score, select):
        stage(cfg, 0)
    runs = tmp_path / "runs"
    model = storage.round_dir(cfg, 0) / "model"
    line = one_line(["train", "--config", str(config), "sft.learning_rate=1e10"], capsys, runs, sft=True)
    assert "SFT diverged:" in line and "nothing was published" in line and "sft.learning_rate=1e+10" in line, line
    assert not model.exists() and not storage.tmp_folder(model).exists()
    capsys.readouterr()
    raft_sft(["train", "--config", str(config)])  # the corrected rerun: the config's learning rate
    assert (model / "manifest.json").exists()
    check_finite_weights(model)


def test_sft_whose_max_length_leaves_no_completion_token_is_one_line(world, tmp_path, capsys) -> None:
    cfg, config = world
    for stage in (generate, score, select):
        stage(cfg, 0)
    line = one_line(["train", "--config", str(config), "sft.max_length=1"], capsys, tmp_path / "runs", sft=True)
    assert "no example left to train on" in line and "sft.max_length=1" in line, line
    assert not (storage.round_dir(cfg, 0) / "model").exists()


def nan_model(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    weights = load_file(dest / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_no_stage_samples_from_or_trains_on_a_model_whose_weights_are_not_finite(
    world, tiny_model_dir, tmp_path, capsys
) -> None:
    cfg, config = world
    bad = nan_model(tiny_model_dir, tmp_path / "nan-model")
    with pytest.raises(ModelLoadError, match=r"nan-model.*not finite \(model.safetensors tensor .*: 1 values are NaN"):
        check_finite_weights(bad)
    check_finite_weights(tiny_model_dir)
    runs = tmp_path / "runs"
    argv = ["generate", "--config", str(config), f"model.name_or_path={bad}"]
    assert "values are NaN or infinite" in one_line(argv, capsys, runs)
    assert "values are NaN or infinite" in one_line(["logprob", "--model", str(bad), "a", "b"], capsys, runs)
    generate(cfg, 0)  # then train round 0 from the NaN model: refused before training
    score(cfg, 0)
    select(cfg, 0)
    line = one_line(["train", "--config", str(config), f"model.name_or_path={bad}"], capsys, runs, sft=True)
    assert "values are NaN or infinite" in line
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors cannot be read"):
        check_finite_weights(damaged)


def test_parquet_with_nested_columns_past_the_limit_is_refused(world, tmp_path, capsys) -> None:
    _, config = world
    value: object = "x"
    for _ in range(MAX_DEPTH + 2):
        value = [value]
    path = tmp_path / "deep.parquet"
    pq.write_table(pa.table({"id": ["a"], "prompt": [value]}), path)
    assert f"more than {MAX_DEPTH} deep" in one_line(
        ["prompts", "--config", str(config), f"prompts.path={path}"], capsys
    )


def test_a_nonfinite_loss_anywhere_in_the_log_is_divergence() -> None:
    from types import SimpleNamespace

    from raft_sft.train import first_nonfinite_loss

    history = [{"loss": 2.5, "step": 1}, {"grad_norm": 1.0, "step": 2}, {"loss": float("nan"), "step": 2}]
    assert first_nonfinite_loss(history, SimpleNamespace(training_loss=1.0)) == (2, history[2]["loss"])
    assert first_nonfinite_loss(history[:2], SimpleNamespace(training_loss=float("inf"))) == ("end", float("inf"))
    assert first_nonfinite_loss(history[:2], SimpleNamespace(training_loss=2.5)) is None
