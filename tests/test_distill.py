"""Distillation: any rounds' selected data (across experiments) into any student, with lineage in the manifest;
LoRA through TRL's peft_config, merged or as an adapter; data-parallel SFT under `accelerate launch` on two CPU
processes with no example lost or repeated; the layer-dropped student."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raft_data import storage
from raft_data.errors import ConfigError, StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_sft.distill import distill
from raft_sft.student import kept_layers, make_student
from raft_sft.train import train

from .conftest import ROOT, make_config

SMALL = {"prompts": {"n_prompts": 4}, "generate": {"n_samples": 2, "max_new_tokens": 8, "n_shards": 2}}
SFT = {"sft": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "max_length": 64}}


def make_round(tmp_path: Path, model_dir: Path, prompts_file: Path, name: str, seed: int = 0):
    experiment = {"name": name, "seed": seed}
    cfg = make_config(tmp_path, model_dir, prompts_file, experiment=experiment, **SMALL, **SFT)
    generate(cfg, 0)
    score(cfg, 0)
    select(cfg, 0)
    return cfg


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.fixture
def two_experiments(tmp_path, tiny_model_dir, prompts_file):
    a = make_round(tmp_path, tiny_model_dir, prompts_file, "exp_a")
    b = make_round(tmp_path, tiny_model_dir, prompts_file, "exp_b", seed=1)  # other prompts and samples
    return a, b


def test_distill_across_experiments(tmp_path, tiny_model_dir, two_experiments) -> None:
    cfg, _ = two_experiments
    student = tmp_path / "student-init"
    make_student(str(tiny_model_dir), student, 1)
    out = tmp_path / "distilled"
    manifest = distill(cfg, [str(tmp_path / "runs" / "exp_*" / "round-0000")], str(student), out)
    assert [r["experiment"] for r in manifest["rounds"]] == ["exp_a", "exp_b"]
    assert all(r["round"] == 0 and r["teacher"] == f"transformers:{tiny_model_dir}" for r in manifest["rounds"])
    assert manifest["teachers"] == [f"transformers:{tiny_model_dir}"]
    assert manifest["student"] == str(student)
    assert manifest["counts"]["examples"] == sum(r["rows"] for r in manifest["rounds"]) == 8
    before, after = weights(student), weights(out)
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every parameter trained
    assert (out / "tokenizer.json").is_file() and not storage.tmp_folder(out).exists()
    # a rerun is skipped; other data is refused without --force
    assert distill(cfg, [str(tmp_path / "runs" / "exp_*" / "round-0000")], str(student), out) == manifest
    with pytest.raises(StageError, match="--force"):
        distill(cfg, [str(tmp_path / "runs" / "exp_a" / "round-0000" / "selected")], str(student), out)


def test_distill_refuses_missing_or_unfinished_data(tmp_path, tiny_config, tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match="matches nothing"):
        distill(tiny_config, [str(tmp_path / "nope-*")], str(tiny_model_dir), tmp_path / "out")
    (tmp_path / "half" / "selected").mkdir(parents=True)
    with pytest.raises(StageError, match="not a finished selected"):
        distill(tiny_config, [str(tmp_path / "half")], str(tiny_model_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lora_merged_and_adapter(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_round(tmp_path, tiny_model_dir, prompts_file, "exp_lora")
    data = [str(storage.round_dir(cfg, 0))]
    merged_cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SFT, lora={"r": 4, "alpha": 8})
    merged = distill(merged_cfg, data, str(tiny_model_dir), tmp_path / "merged")
    assert merged["lora"]["r"] == 4 and 0 < merged["trainable_parameters"] < 100_000
    w0, w1 = weights(tiny_model_dir), weights(tmp_path / "merged")
    assert w0.keys() == w1.keys()  # a plain model folder, the adapter merged in
    changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert changed and all("proj" in k for k in changed)  # only the adapted linear layers moved
    adapter_cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **SFT, lora={"r": 4, "merge": False})
    distill(adapter_cfg, data, str(tiny_model_dir), tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()


def test_round_sft_with_lora(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_round(tmp_path, tiny_model_dir, prompts_file, "exp_round_lora")
    cfg = make_config(
        tmp_path, tiny_model_dir, prompts_file, experiment={"name": "exp_round_lora"}, **SMALL, **SFT, lora={"r": 2}
    )
    manifest = train(cfg, 0)
    assert manifest["config"]["lora"]["r"] == 2
    assert (storage.round_dir(cfg, 0) / "model" / "model.safetensors").is_file()


def test_sft_data_parallel_two_cpu_processes(tmp_path, tiny_model_dir, two_experiments) -> None:
    """Two CPU processes under `accelerate launch`: each rank trains on its half, together on all 8 examples once.
    (On a machine without GPUs, accelerate's --multi_gpu starts torchrun processes that use gloo on the CPU;
    `--cpu --num_processes 2` alone runs one process unless an MPI hostfile is given.)"""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "raft_data.cli.sft", "train", "--config", str(tmp_path / "cfg.yaml"),
        "--data", str(tmp_path / "runs" / "exp_*" / "round-0000"),
        "--model", str(tiny_model_dir), "--output", str(out), "--log-examples",
    ]  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(two_experiments[0].to_yaml())  # its sft: 1 epoch, 2 per device
    # CPU processes (gloo) even where a GPU is visible: two processes on one GPU would fail
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = storage.read_json(out / "manifest.json")
    assert manifest["counts"]["processes"] == 2
    assert manifest["counts"]["steps"] == 2  # 8 examples / (2 processes x 2 per device)
    ranks = [storage.read_json(out / "examples" / f"rank-{r:05d}.json")["example_ids"] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    seen = ranks[0] + ranks[1]
    assert len(set(seen)) == len(seen) == 8  # none repeated, none lost
    assert {s.split("/")[0] for s in seen} == {"exp_a", "exp_b"}
    w0, w1 = weights(tiny_model_dir), weights(out)
    assert all(not torch.equal(w0[k], w1[k]) for k in w0)
    assert not storage.tmp_folder(out).exists()


def test_student_keeps_spread_layers(tmp_path, tiny_model_dir) -> None:
    assert kept_layers(30, 6) == [0, 6, 12, 17, 23, 29]
    assert kept_layers(2, 1) == [1]
    with pytest.raises(ValueError, match="--layers=3"):
        kept_layers(2, 3)
    info = make_student(str(tiny_model_dir), tmp_path / "s", 1)
    teacher, student = weights(tiny_model_dir), weights(tmp_path / "s")
    assert info["parameters"] < info["teacher_parameters"]
    name = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(student[name.format(0)], teacher[name.format(1)])
    assert name.format(1) not in student


def test_evaluate_on_heldout_prompts(tmp_path, tiny_model_dir, prompts_file) -> None:
    import pyarrow.parquet as pq

    from raft_data.data.prompts import split_prompts
    from raft_data.rewards.builtin import vader
    from raft_data.tools.heldout import heldout_reward

    sections = {**SMALL, "prompts": {"n_prompts": 4, "heldout_fraction": 0.5}}
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, **sections)
    result = heldout_reward(cfg, str(tiny_model_dir), 2, tmp_path / "eval.parquet")
    table = pq.read_table(tmp_path / "eval.parquet").to_pydict()
    _, heldout = split_prompts(cfg.prompts)
    assert set(table["prompt_id"]) == set(heldout["prompt_id"].to_pylist()[:2])  # held-out prompts only
    assert result["samples"] == len(table["reward"]) == 2 * cfg.generate.n_samples
    assert table["reward"] == vader(table["prompt"], table["completion"])
    assert result["mean_reward"] == pytest.approx(sum(table["reward"]) / len(table["reward"]))
    # the same seed for every model: a second evaluation of the same model gives the same samples
    again = heldout_reward(cfg, str(tiny_model_dir), 2)
    assert again["mean_reward"] == result["mean_reward"]
