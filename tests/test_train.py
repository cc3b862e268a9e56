"""The SFT stage: a saved model whose every trainable parameter moved, and round n+1 starting from round n."""

import json

import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM

from raft_data import storage
from raft_data.errors import ConfigError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_sft.train import train

from .conftest import make_config


def build_round(cfg, round_idx: int) -> None:
    generate(cfg, round_idx)
    score(cfg, round_idx)
    select(cfg, round_idx)


def test_selected_loads_with_datasets_and_sft_changes_every_parameter(tiny_config, tiny_model_dir) -> None:
    build_round(tiny_config, 0)
    rdir = storage.round_dir(tiny_config, 0)
    ds = load_dataset("parquet", data_files=str(rdir / "selected" / "*.parquet"), split="train")
    assert len(ds) == 8 and {"prompt", "completion", "reward", "prompt_id"} <= set(ds.column_names)

    manifest = train(tiny_config, 0)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(rdir / "model")
    for (name, p0), (_, p1) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        assert not torch.equal(p0, p1), f"{name} did not change"
    assert manifest["counts"]["examples"] == 8 and manifest["start_model"] == str(tiny_model_dir)
    assert json.loads((rdir / "model" / "manifest.json").read_text())["config_hash"] == manifest["config_hash"]
    assert not (rdir / "model" / "training_args.bin").exists()
    assert not storage.tmp_folder(rdir / "model").exists()


def test_round_one_samples_from_and_trains_from_round_zeros_model(tiny_config) -> None:
    build_round(tiny_config, 0)
    train(tiny_config, 0)
    manifest = generate(tiny_config, 1)
    assert manifest["inputs"]["model"]["stage"] == "round-0000/model"
    score(tiny_config, 1)
    select(tiny_config, 1)
    manifest = train(tiny_config, 1)
    assert manifest["start_model"] == str(storage.round_dir(tiny_config, 0) / "model")


def test_unknown_sft_field_is_refused_before_training(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, sft={"learning_rat": 1e-3})
    build_round(cfg, 0)
    with pytest.raises(ConfigError, match="unknown key sft.learning_rat"):
        train(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "model").exists()


def test_end_of_sequence_is_trained_only_where_the_sample_ended(tiny_model_dir) -> None:
    """A sample cut at max_new_tokens did not end: its labels must not teach the model to stop there."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from raft_sft.train import mark_eos, tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = {
        "prompt": ["The film is", "The film is"],
        "completion": [" great fun.", " great fun and"],
        "truncated": [False, True],
    }
    encoded = tokenize_examples(mark_eos(Dataset.from_dict(rows), stop=[]), tokenizer)
    ended, cut = encoded[0], encoded[1]
    n_prompt = len(tokenizer("The film is")["input_ids"])
    assert ended["input_ids"][-1] == tokenizer.eos_token_id and ended["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in cut["input_ids"]
    for row in (ended, cut):
        assert row["labels"][:n_prompt] == [-100] * n_prompt  # no loss on the prompt
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]


def test_sft_trains_on_the_messages_form(tmp_path, tiny_model_dir, prompts_file) -> None:
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        select={"format": "messages"},
        sft={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 64},
    )
    generate(cfg, 0)
    score(cfg, 0)
    select(cfg, 0)
    manifest = train(cfg, 0)
    assert manifest["counts"]["steps"] == 1 and manifest["counts"]["examples"] == cfg.prompts.n_prompts
