"""generate.batch_size: auto: 16 prompts per batch on CPU, on CUDA sized to the GPU's memory."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raft_data.backends import transformers as tb
from raft_data.config import GenerateConfig, ModelConfig

from .conftest import REVIEW_OPENINGS

# SmolLM2-135M in float32: 30 layers, 3 KV heads of 64 dimensions, 4 bytes each, keys and values
SMOLLM2_KV_BYTES = 2 * 30 * 3 * 64 * 4


def test_auto_batch_size_fits_the_kv_cache_and_logits_in_memory() -> None:
    # a row of 72 tokens: 72 * 46,080 bytes of cache + 3 float32 copies of 49,152 logits = 3,907,584 bytes;
    # 1 GiB holds 274 such rows, 34 prompts of 8 rows each
    assert tb.auto_batch_size(2**30, SMOLLM2_KV_BYTES, 49_152, 72, 8) == 34
    assert tb.auto_batch_size(2**30, SMOLLM2_KV_BYTES, 49_152, 72, 9) == 30  # eval: one greedy row more per prompt
    assert tb.auto_batch_size(2**40, SMOLLM2_KV_BYTES, 49_152, 72, 8) == tb.AUTO_MAX_BATCH
    assert tb.auto_batch_size(1e6, SMOLLM2_KV_BYTES, 49_152, 72, 8) == 1  # never zero


def _fake_model(device: str):
    import torch

    config = SimpleNamespace(
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576, vocab_size=49_152
    )
    weights = [torch.zeros(1000, dtype=torch.float32)]  # 4,000 bytes of weights
    return SimpleNamespace(device=SimpleNamespace(type=device), config=config, parameters=lambda: iter(weights))


def _tokenizer(prompts: list[str]) -> dict:
    """A stand-in tokenizer: one token per character."""
    return {"input_ids": [list(range(len(p))) for p in prompts]}


def test_prompt_batch_size_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    prompts = ["x" * 40, "x" * 12]  # the longest: 40 tokens, + 32 new = 72

    cfg = GenerateConfig(n_samples=8, max_new_tokens=32)
    assert cfg.batch_size == "auto"
    assert tb.kv_bytes_per_token(_fake_model("cpu")) == SMOLLM2_KV_BYTES  # head_dim from hidden_size / heads
    assert tb.prompt_batch_size(cfg, _fake_model("cpu"), _tokenizer, prompts, 8) == tb.AUTO_CPU_BATCH
    # on CUDA: half of (total memory - weights); a GPU with 2 GiB + 4,000 bytes leaves 1 GiB: 34 prompts, as above
    gpu = SimpleNamespace(total_memory=2 * 2**30 + 4000)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    assert tb.prompt_batch_size(cfg, _fake_model("cuda"), _tokenizer, prompts, 8) == 34
    # a number given is used as it is, on any device
    fixed = GenerateConfig(n_samples=8, max_new_tokens=32, batch_size=5)
    assert tb.prompt_batch_size(fixed, _fake_model("cuda"), _tokenizer, prompts, 8) == 5


def test_auto_on_cpu_draws_what_16_draws(tiny_model_dir) -> None:
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    prompts = (REVIEW_OPENINGS * 5)[:20]  # more than one batch of 16
    runs = []
    for size in ("auto", 16):
        cfg = GenerateConfig(n_samples=2, max_new_tokens=6, batch_size=size, device="cpu")
        sample = tb.transformers_backend(str(tiny_model_dir), model_cfg, cfg)
        runs.append([[(c.text, c.n_tokens) for c in comps] for comps in sample(prompts, 7)])
    assert runs[0] == runs[1] and len(runs[0]) == 20
