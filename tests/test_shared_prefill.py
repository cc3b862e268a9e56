"""Shared prefill: each prompt is encoded once and its KV cache copied K ways; sampling must not change."""

from __future__ import annotations

import pytest

from raft_data.backends.transformers import transformers_backend
from raft_data.config import GenerateConfig, ModelConfig

from .conftest import REVIEW_OPENINGS


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1.0, "top_p": 1.0, "top_k": 0},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 20},
        {"temperature": 0.0},
    ],
)
def test_shared_prefill_draws_the_same_samples(tiny_model_dir, sampling):
    """Same seed, same left-padded batches of different lengths: the same completions, token for token."""
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    prompts = REVIEW_OPENINGS[:7]
    runs = {}
    for shared in (False, True):
        cfg = GenerateConfig(
            n_samples=4, max_new_tokens=12, batch_size=3, shared_prefill=shared, device="cpu", **sampling
        )
        sample = transformers_backend(str(tiny_model_dir), model_cfg, cfg)
        runs[shared] = [[(c.text, c.n_tokens, c.truncated) for c in comps] for comps in sample(prompts, 1234)]
    assert len(runs[True]) == 7 and all(len(c) == 4 for c in runs[True])
    assert runs[True] == runs[False]
    if sampling["temperature"] > 0:
        assert len({c for comps in runs[True] for c in comps}) > 7  # really sampled, not one text per prompt


def test_one_token_prompts_fall_back_to_plain_generate(tiny_model_dir):
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    cfg = GenerateConfig(n_samples=2, max_new_tokens=4, shared_prefill=True, device="cpu")
    out = transformers_backend(str(tiny_model_dir), model_cfg, cfg)(["Hello", "Hi"], 0)
    assert [len(c) for c in out] == [2, 2]
