"""Shared fixtures: a tiny Llama with the real SmolLM2 tokenizer, a small prompts file, and configs pointing at them.

The real assets come from `make setup` (assets/); tests that need them fail with that hint if they are missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft_data.config import Config, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
REAL_MODEL = ASSETS / "smollm2-135m-instruct"
REAL_PROMPTS = ASSETS / "movie_reviews.parquet"


def require_assets() -> None:
    if not (REAL_MODEL / "model.safetensors").exists() or not REAL_PROMPTS.exists():
        pytest.fail("the default assets are missing: run `make setup` (make test does it for you)")


def tiny_llama_config(tokenizer, **overrides):
    """A few-M-parameter Llama config over the real tokenizer's vocabulary; `overrides` change sizes or labels."""
    from transformers import LlamaConfig

    sizes = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(sizes | overrides),
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~1.6M-parameter Llama built from a config, saved with the real tokenizer (vocab 49,152)."""
    require_assets()
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REAL_MODEL)
    config = tiny_llama_config(tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


REVIEW_OPENINGS = [
    "The film is a",
    "I went to see this movie and",
    "An odd little comedy that",
    "The acting in this picture",
    "This sequel is",
    "Nobody expected the director to",
    "A long, slow story about",
    "The soundtrack alone",
    "By the end of the second act",
    "It is hard to say whether",
    "The best thing about this film",
    "What starts as a thriller",
]


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(REVIEW_OPENINGS):
            f.write(json.dumps({"id": f"p{i:03d}", "prompt": text}) + "\n")
    return path


def make_config(tmp_path: Path, model_dir: Path, prompts_path: Path, **sections: dict) -> Config:
    """A small, fast config in tmp_path; `sections` override fields, e.g. generate={"n_samples": 2}."""
    data = {
        "experiment": {"name": "test", "output_root": str(tmp_path / "runs"), "seed": 0},
        "model": {"name_or_path": str(model_dir)},
        "prompts": {"path": str(prompts_path), "id_column": "id", "n_prompts": 8, "heldout_fraction": 0.0},
        "generate": {"n_samples": 3, "max_new_tokens": 8, "batch_size": 4, "n_shards": 3},
        "score": {"reward": "vader"},
        "select": {"strategy": "best_per_prompt"},
        "sft": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 64},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return config_from_dict(data)


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_model_dir: Path, prompts_file: Path) -> Config:
    return make_config(tmp_path, tiny_model_dir, prompts_file)
