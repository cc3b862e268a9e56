"""Faults an operator meets: kills in every stage, damaged or deleted artifacts, failed first attempts, edited
inputs, misbehaving rewards, bad training settings. Nothing is lost, nothing is mixed, and every refusal is one
line that says what to do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.config import Config
from raft_data.errors import ConfigError, DataError, ModelLoadError, StageError
from raft_data.rounds import run_rounds
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_sft.train import train

from .conftest import ROOT, make_config

SMALL = {"generate": {"n_samples": 2, "max_new_tokens": 6, "n_shards": 2}, "prompts": {"n_prompts": 6}}
SFT = {"sft": {"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 32}}


def small_config(tmp_path: Path, model: Path, prompts_path: Path, name: str = "test", **sections: dict) -> Config:
    merged = {**SMALL, **SFT}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value}
    return make_config(tmp_path, model, prompts_path, experiment={"name": name}, **merged)


def shards(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in storage.shard_files(folder)])


def one_line_exit_2(argv: list[str], capsys) -> str:
    """Run `raft-data argv` in this process; it must exit 2 with exactly one line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        raft_data(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------------------------
# 1. An empty selection


def test_empty_selection_warns_and_training_stops_with_the_reason(tmp_path, tiny_model_dir, prompts_file, capsys):
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file, select={"strategy": "threshold", "tau": 2.0})
    generate(cfg, 0)
    score(cfg, 0)
    manifest = select(cfg, 0)  # VADER never reaches 2.0
    assert manifest["counts"]["selected"] == 0
    assert "warning: round 0: selected/ holds no rows (select.strategy=threshold" in capsys.readouterr().err
    with pytest.raises(StageError, match=r"round 0: selected/ holds no rows.*select.strategy=threshold"):
        train(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "model").exists()
    with pytest.raises(StageError, match="holds no rows"):
        run_rounds(cfg, 1, train)


def test_empty_selection_names_the_guard_that_emptied_it(tmp_path, tiny_model_dir, prompts_file, capsys):
    # 2 new tokens: every sample is cut at max_new_tokens, and drop_truncated drops them all
    cfg = small_config(
        tmp_path, tiny_model_dir, prompts_file, generate={"max_new_tokens": 2}, select={"drop_truncated": True}
    )
    generate(cfg, 0)
    score(cfg, 0)
    select(cfg, 0)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    from raft_data.cli.sft import main as raft_sft

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        raft_sft(["train", "--config", str(path), "--round", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "round 0: selected/ holds no rows" in err and "truncated dropped 12" in err


# ---------------------------------------------------------------------------------------------------------------------
# 2. A failed first attempt never blocks the corrected rerun


def test_wrong_prompts_path_then_the_fix_runs_without_force(tmp_path, tiny_model_dir, prompts_file):
    bad = small_config(tmp_path, tiny_model_dir, prompts_file, prompts={"path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        generate(bad, 0)
    good = small_config(tmp_path, tiny_model_dir, prompts_file)
    assert generate(good, 0)["counts"]["samples"] == 12


def test_missing_model_then_the_fix_runs_without_force(tmp_path, tiny_model_dir, prompts_file):
    bad = small_config(tmp_path, tmp_path / "no-model", prompts_file)
    with pytest.raises(ModelLoadError, match="not a model folder"):
        generate(bad, 0)
    assert generate(small_config(tmp_path, tiny_model_dir, prompts_file), 0)["counts"]["samples"] == 12


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_then_the_fix_runs_without_force(tmp_path, tiny_model_dir, prompts_file):
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        generate(small_config(tmp_path, tiny_model_dir, prompts_file, generate={"device": "cuda"}), 0)
    assert generate(small_config(tmp_path, tiny_model_dir, prompts_file), 0)["counts"]["samples"] == 12


def test_a_reward_that_raises_then_the_fix_runs_without_force(tmp_path, tiny_model_dir, prompts_file):
    bad = small_config(tmp_path, tiny_model_dir, prompts_file, score={"reward": "tests.rewards_for_tests:raises"})
    generate(bad, 0)
    with pytest.raises(DataError, match=r"reward 'raises' raised ValueError\('the reward server is down'\)"):
        score(bad, 0)
    assert score(small_config(tmp_path, tiny_model_dir, prompts_file), 0)["counts"]["scores"] == 12


def test_a_finished_shard_still_pins_the_config(tmp_path, tiny_model_dir, prompts_file):
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0, shard=0)
    other = small_config(tmp_path, tiny_model_dir, prompts_file, generate={"temperature": 0.5})
    with pytest.raises(StageError, match="another config"):
        generate(other, 0)


# ---------------------------------------------------------------------------------------------------------------------
# 3. An edited prompts file between a kill and the resume


def test_edited_prompts_file_is_refused_on_resume(tmp_path, tiny_model_dir, prompts_file):
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0, shard=0)  # as if killed after the first shard
    before = pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet")
    lines = prompts_file.read_text().splitlines()
    edited = [json.dumps({"id": "p000", "prompt": "A different opening"})] + lines[1:]
    prompts_file.write_text("\n".join(edited) + "\n")
    with pytest.raises(StageError, match="another config"):
        generate(cfg, 0)
    assert pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet").equals(before)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Damaged, deleted or added shards


@pytest.fixture
def scored_round(tmp_path, tiny_model_dir, prompts_file) -> Config:
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    score(cfg, 0)
    return cfg


def test_a_truncated_samples_shard_stops_the_next_stage(scored_round, capsys):
    cfg = scored_round
    samples = storage.round_dir(cfg, 0) / "samples"
    shutil.rmtree(storage.round_dir(cfg, 0) / "scores")
    victim = storage.shard_files(samples)[1]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{victim.name} is damaged"):
        score(cfg, 0)


def test_a_deleted_scores_shard_stops_select_and_status_verify(scored_round, tmp_path, capsys):
    cfg = scored_round
    victim = storage.shard_files(storage.round_dir(cfg, 0) / "scores")[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"{victim.name} is missing"):
        select(cfg, 0)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    err = one_line_exit_2(["status", "--config", str(path), "--verify"], capsys)
    assert "verify: 1 problem(s)" in err and victim.name in err


def test_an_added_shard_is_refused(scored_round):
    cfg = scored_round
    samples = storage.round_dir(cfg, 0) / "samples"
    shutil.copy(storage.shard_files(samples)[0], samples / storage.shard_name(7, 9))
    with pytest.raises(DataError, match="shard-00007-of-00009.parquet is not listed"):
        select(cfg, 0)


def test_status_verify_says_intact(scored_round, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(scored_round.to_yaml())
    raft_data(["status", "--config", str(path), "--verify"])
    assert "is intact" in capsys.readouterr().out


def test_a_damaged_manifest_is_one_line(scored_round, tmp_path, capsys):
    cfg = scored_round
    (storage.round_dir(cfg, 0) / "scores" / "manifest.json").write_text('{"stage": "sco')
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert "manifest.json is damaged" in one_line_exit_2(["select", "--config", str(path)], capsys)


# ---------------------------------------------------------------------------------------------------------------------
# 5. User code and training settings


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ("strings", r"reward 'strings' returned 'high' for prompt_id=p\d+ sample_idx=0"),
        ("nones", r"reward 'nones' returned None for prompt_id=p\d+ sample_idx=0"),
        ("scalar", r"reward 'scalar' returned 0.5 for the batch from prompt_id=p\d+ sample_idx=0.*expected a list"),
        ("too_few", r"reward 'too_few' returned 5 values for 6 completions"),
        ("nan", r"reward 'nan' returned nan for prompt_id=p\d+ sample_idx=1"),
    ],
)
def test_a_misbehaving_reward_is_named_with_the_first_bad_row(tmp_path, tiny_model_dir, prompts_file, reward, message):
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file, score={"reward": f"tests.rewards_for_tests:{reward}"})
    generate(cfg, 0)
    with pytest.raises(DataError, match=message):
        score(cfg, 0)


def test_debug_shows_the_rewards_own_exception(tmp_path, tiny_model_dir, prompts_file):
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file, score={"reward": "tests.rewards_for_tests:raises"})
    generate(cfg, 0)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "raft_data", "score", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plain = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "the reward server is down" in plain.stderr
    debug = subprocess.run([*cmd, "--debug"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" in debug.stderr and "ValueError: the reward server is down" in debug.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "config.json").write_text("{not json"), "config.json' is not a valid JSON file"),
        (lambda d: (d / "config.json").write_text("{}"), "could not be loaded"),
        (lambda d: [p.unlink() for p in d.glob("tokenizer*")], "tokenizer could not be loaded"),
    ],
    ids=["broken-config", "empty-config", "no-tokenizer"],
)
def test_a_broken_model_folder_is_one_error(tmp_path, tiny_model_dir, prompts_file, setup, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    setup(model)
    with pytest.raises(ModelLoadError, match=message):
        generate(small_config(tmp_path, model, prompts_file), 0)


@pytest.mark.parametrize(
    ("sft", "message"),
    [
        ({"learning_rate": "abc"}, "sft.learning_rate='abc' is invalid: expected a number"),
        ({"per_device_train_batch_size": 0}, "sft.per_device_train_batch_size=0 is invalid: expected >= 1"),
        ({"max_steps": -1, "num_train_epochs": -1}, "sft.num_train_epochs=-1 is invalid: expected > 0"),
    ],
)
def test_bad_sft_settings_stop_before_a_model_is_loaded(tmp_path, tiny_model_dir, prompts_file, sft, message):
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file)
    generate(cfg, 0)
    score(cfg, 0)
    select(cfg, 0)
    bad = small_config(tmp_path, tiny_model_dir, prompts_file, sft=sft)
    with pytest.raises(ConfigError, match=message):
        train(bad, 0)
    rdir = storage.round_dir(cfg, 0)
    assert not (rdir / "model").exists() and not storage.tmp_folder(rdir / "model").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 6. The smaller ones


def test_an_output_root_under_a_file_is_one_line(tmp_path, tiny_model_dir, prompts_file, capsys):
    (tmp_path / "afile").write_text("x")
    cfg = small_config(tmp_path, tiny_model_dir, prompts_file)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    err = one_line_exit_2(["generate", "--config", str(path), f"experiment.output_root={tmp_path / 'afile'}"], capsys)
    assert "cannot create the folder" in err and "experiment.output_root" in err


def test_overrides_on_both_sides_of_an_option(scored_round, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(scored_round.to_yaml())
    raft_data(["select", "--config", str(path), "select.n=1", "--round", "0", "select.drop_empty=true"])
    manifest = storage.read_json(storage.round_dir(scored_round, 0) / "selected" / "manifest.json")
    assert manifest["config"]["select"]["drop_empty"] is True


# ---------------------------------------------------------------------------------------------------------------------
# kill -9 in score, select and sft; the rerun ends as an uninterrupted run does


def start(command: list[str], cfg_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *command, "--config", str(cfg_path), "--round", "0"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the stage finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def two_experiments(tmp_path, tiny_model_dir, prompts_file, **sections) -> tuple[Config, Config, Path]:
    killed = small_config(tmp_path, tiny_model_dir, prompts_file, name="killed", **sections)
    clean = small_config(tmp_path, tiny_model_dir, prompts_file, name="clean", **sections)
    path = tmp_path / "killed.yaml"
    path.write_text(killed.to_yaml())
    return killed, clean, path


def test_kill_9_during_score_then_rerun(tmp_path, tiny_model_dir, prompts_file):
    reward = {"reward": "tests.rewards_for_tests:slow_vader"}
    killed, clean, path = two_experiments(
        tmp_path, tiny_model_dir, prompts_file, score=reward, generate={"n_shards": 3}
    )
    generate(killed, 0)
    scores = storage.round_dir(killed, 0) / "scores"
    kill_when(start(["raft_data", "score"], path), lambda: len(list(scores.glob("*.done"))) == 1)
    assert len(list(scores.glob("*.done"))) < 3 and not (scores / "manifest.json").exists()
    score(killed, 0)
    generate(clean, 0)
    score(clean, 0)
    assert shards(scores).equals(shards(storage.round_dir(clean, 0) / "scores"))


def test_kill_9_during_select_then_rerun(tmp_path, tiny_model_dir, prompts_file):
    killed, clean, path = two_experiments(tmp_path, tiny_model_dir, prompts_file)
    for cfg in (killed, clean):
        generate(cfg, 0)
        score(cfg, 0)
    rdir = storage.round_dir(killed, 0)
    kill_when(start(["raft_data", "select"], path), lambda: storage.tmp_folder(rdir / "selected").exists())
    assert not (rdir / "selected").exists()
    select(killed, 0)
    select(clean, 0)
    assert shards(rdir / "selected").equals(shards(storage.round_dir(clean, 0) / "selected"))


def test_kill_9_during_sft_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, prompts_file):
    sft = {"max_steps": 40, "save_strategy": "steps", "save_steps": 5, "per_device_train_batch_size": 2}
    killed, _, path = two_experiments(tmp_path, tiny_model_dir, prompts_file, sft=sft)
    generate(killed, 0)
    score(killed, 0)
    select(killed, 0)
    trainer = storage.tmp_folder(storage.round_dir(killed, 0) / "model") / "trainer"
    proc = start(["raft_data.cli.sft", "train"], path)
    kill_when(proc, lambda: (trainer / "checkpoint-10" / "trainer_state.json").is_file())
    assert not (storage.round_dir(killed, 0) / "model").exists()
    manifest = train(killed, 0)
    assert manifest["counts"]["steps"] == 40
    assert manifest["resumed_from_checkpoint"].startswith("checkpoint-")
    assert int(manifest["resumed_from_checkpoint"].split("-")[1]) >= 10
