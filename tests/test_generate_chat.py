"""Chat templates (message lists or plain prompts) and prompts longer than the model can take."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from raft_data import storage
from raft_data.errors import ConfigError
from raft_data.stages.generate import generate

from .conftest import make_config


def read_samples(cfg) -> list[dict]:
    folder = storage.round_dir(cfg, 0) / "samples"
    return pa.concat_tables([pq.read_table(p) for p in storage.shard_files(folder)]).to_pylist()


@pytest.fixture
def chat_prompts(tmp_path):
    """A parquet prompt source whose column holds chat messages (list<struct<role, content>>)."""
    conversations = [
        [{"role": "system", "content": "You write short film reviews."}, {"role": "user", "content": f"Review {t}"}]
        for t in ("a western", "a musical", "a heist film", "a documentary")
    ]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"id": ["c0", "c1", "c2", "c3"], "messages": conversations}), path)
    return path, conversations


def test_message_lists_go_through_the_chat_template(tmp_path, tiny_model_dir, chat_prompts):
    path, conversations = chat_prompts
    prompts = {"path": str(path), "prompt_column": "messages", "n_prompts": 4}
    cfg = make_config(tmp_path, tiny_model_dir, path, prompts=prompts, generate={"chat_template": True})
    manifest = generate(cfg, 0)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert manifest["chat_template"] == tokenizer.chat_template
    stored = pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet").to_pylist()
    by_id = {row["prompt_id"]: json.loads(row["prompt"]) for row in stored}
    assert by_id == dict(zip(["c0", "c1", "c2", "c3"], conversations, strict=True))
    rows = read_samples(cfg)
    assert len(rows) == 4 * 3
    for row in rows:
        expected = tokenizer.apply_chat_template(by_id[row["prompt_id"]], tokenize=False, add_generation_prompt=True)
        assert row["prompt"] == expected
        assert row["prompt"].endswith("<|im_start|>assistant\n")


def test_message_lists_need_chat_template(tmp_path, tiny_model_dir, chat_prompts):
    path, _ = chat_prompts
    prompts = {"path": str(path), "prompt_column": "messages", "n_prompts": 4}
    cfg = make_config(tmp_path, tiny_model_dir, path, prompts=prompts)
    with pytest.raises(ConfigError, match="set generate.chat_template=true"):
        generate(cfg, 0)
    assert not storage.shard_files(storage.round_dir(cfg, 0) / "samples")


def test_plain_prompts_with_chat_template(tmp_path, tiny_model_dir, prompts_file):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, generate={"chat_template": True, "n_shards": 1})
    generate(cfg, 0)
    originals = {
        r["prompt_id"]: r["prompt"] for r in pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet").to_pylist()
    }
    for row in read_samples(cfg):
        assert row["prompt"].startswith("<|im_start|>system\n")
        assert f"<|im_start|>user\n{originals[row['prompt_id']]}<|im_end|>\n<|im_start|>assistant\n" in row["prompt"]


@pytest.fixture
def long_prompts_file(tmp_path):
    """Two prompts of ~300 tokens (over the tiny model's 256 positions) among short ones."""
    path = tmp_path / "long.jsonl"
    rows = [{"id": f"s{i}", "prompt": f"A short prompt number {i}"} for i in range(4)]
    rows += [{"id": f"l{i}", "prompt": "very " * 300 + f"long {i}"} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prompts_over_the_model_context_are_skipped_and_reported(tmp_path, tiny_model_dir, long_prompts_file):
    cfg = make_config(tmp_path, tiny_model_dir, long_prompts_file, prompts={"n_prompts": 6})
    manifest = generate(cfg, 0)
    report = manifest["long_prompts"]
    assert report["max_prompt_tokens"] == 256 - 8  # context minus max_new_tokens
    assert report["action"] == "skip" and report["n_long"] == 2
    assert sorted(report["long_prompt_ids"]) == ["l0", "l1"]
    assert sorted({r["prompt_id"] for r in read_samples(cfg)}) == ["s0", "s1", "s2", "s3"]
    assert manifest["counts"]["samples"] == 4 * 3


def test_truncate_left_keeps_the_end_of_the_prompt(tmp_path, tiny_model_dir, long_prompts_file):
    generate_fields = {"max_prompt_tokens": 6, "long_prompts": "truncate_left", "n_shards": 2}
    cfg = make_config(tmp_path, tiny_model_dir, long_prompts_file, prompts={"n_prompts": 6}, generate=generate_fields)
    manifest = generate(cfg, 0)
    assert sorted(manifest["long_prompts"]["long_prompt_ids"]) == ["l0", "l1"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = read_samples(cfg)
    assert len({r["prompt_id"] for r in rows}) == 6
    for row in rows:
        n = len(tokenizer(row["prompt"])["input_ids"])
        if row["prompt_id"].startswith("l"):
            assert n == 6 and row["prompt"].endswith(f"long {row['prompt_id'][1]}")
        else:
            assert n <= 6


def test_length_options_are_validated(tmp_path, tiny_model_dir, prompts_file):
    with pytest.raises(ConfigError, match="generate.long_prompts='drop'"):
        make_config(tmp_path, tiny_model_dir, prompts_file, generate={"long_prompts": "drop"})
    with pytest.raises(ConfigError, match="generate.max_prompt_tokens=0"):
        make_config(tmp_path, tiny_model_dir, prompts_file, generate={"max_prompt_tokens": 0})
