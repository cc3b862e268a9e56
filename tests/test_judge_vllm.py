"""The LLM-judge reward against vLLM's own OpenAI-compatible server (CPU build) on loopback: a tiny Llama rigged to
answer 7, 3, yes or no judges a tiny round; then, with the server killed, a forced rescore of the round is answered
from the cache alone. Marked `vllm`: run with `make test-vllm`."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.stages.generate import generate
from raft_data.stages.score import score

from .conftest import REAL_MODEL, make_config, require_assets, tiny_llama_config
from .model_server import make_judge_model
from .test_backend_vllm import free_port, kill_server, needs_vllm, start_server


@pytest.fixture
def vllm_judge_dir(tmp_path: Path) -> Path:
    """The rigged judge on a tiny Llama with head_dim 32 (vLLM's CPU attention has no kernel for the usual 8)."""
    require_assets()
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REAL_MODEL)
    config = tiny_llama_config(
        tokenizer, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return make_judge_model(tmp_path / "base", tmp_path / "judge", words=("7", "3", "yes", "no"))


@pytest.mark.vllm
@needs_vllm
def test_judge_on_a_vllm_server_then_a_rescore_from_the_cache_alone(
    tmp_path, tiny_model_dir, vllm_judge_dir, prompts_file
):
    judge_dir = vllm_judge_dir
    port = free_port()
    judge = {
        "api_base": f"http://127.0.0.1:{port}/v1",
        "model": str(judge_dir),  # what `vllm serve PATH` serves
        "endpoint": "completions",
        "template": "Review: {prompt}{completion}",
        "parse": r"\b(yes|no|\d+)\b",
        "max_tokens": 1,
        "max_retries": 1,
        "backoff_s": 0.1,
    }
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, score={"reward": [{"judge": judge}]})
    generate(cfg, 0)
    server = start_server(judge_dir, port, tmp_path / "server.log")
    try:
        score(cfg, 0)
    finally:
        kill_server(server)
    rdir = storage.round_dir(cfg, 0)
    rows = [r for f in storage.shard_files(rdir / "scores") for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 24 and all(r["error"] is None for r in rows)
    assert {r["judge"] for r in rows} <= {0.0, 1.0, 3.0, 7.0}

    manifest = score(cfg, 0, into="again")  # no server now: every answer comes from the cache
    again = [r for f in storage.shard_files(rdir / "rescores" / "again") for r in pq.read_table(f).to_pylist()]
    assert again == rows and manifest["counts"]["scores"] == 24
