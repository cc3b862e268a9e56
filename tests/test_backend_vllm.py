"""The generate stage through vLLM, for real: the offline engine on the tiny and the default model, and vLLM's own
OpenAI-compatible server on loopback killed in the middle of a round.

These tests are marked `vllm` and run with `make test-vllm` (inside .venv-vllm, which `make setup-vllm` builds).
Where vLLM is not importable (the default `make test` environment) they are skipped with that reason.
Each stage runs as its own process (`python -m raft_data generate`), as users run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.errors import BackendError
from raft_data.storage import schemas

from .conftest import REAL_MODEL, REAL_PROMPTS, make_config, require_assets, tiny_llama_config

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not importable here: run `make test-vllm`")
ROOT = Path(__file__).resolve().parents[1]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_stage(cfg, tmp_path: Path, name: str = "exp.yaml", check: bool = True) -> subprocess.CompletedProcess:
    """`python -m raft_data generate` in a fresh process, so the engine is started and freed as in real use."""
    config_path = tmp_path / name
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")
    cmd = [sys.executable, "-m", "raft_data", "generate", "--config", str(config_path), "--round", "0"]
    proc = subprocess.run(cmd, env=engine_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def check_shards(cfg) -> list[dict]:
    """The samples/ folder a finished generate stage must leave, whatever the backend."""
    folder = storage.round_dir(cfg, 0) / "samples"
    manifest = storage.read_json(folder / "manifest.json")
    files = storage.shard_files(folder)
    assert len(files) == cfg.generate.n_shards
    rows = []
    for f in files:
        table = pq.read_table(f)
        assert table.schema.equals(schemas.SAMPLES, check_metadata=False)
        assert storage.shard_done(f)
        rows += table.to_pylist()
    prompts = pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet").to_pylist()
    k = cfg.generate.n_samples
    assert len(rows) == len(prompts) * k == manifest["counts"]["samples"]
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    assert sorted(by_prompt) == sorted(p["prompt_id"] for p in prompts)
    for samples in by_prompt.values():
        assert [r["sample_idx"] for r in samples] == list(range(k))
    for r in rows:
        assert 1 <= r["n_tokens"] <= cfg.generate.max_new_tokens
        if r["truncated"]:  # stopped by the length limit, so it used all of it
            assert r["n_tokens"] == cfg.generate.max_new_tokens
    assert manifest["counts"]["truncated"] == sum(r["truncated"] for r in rows)
    return rows


@pytest.fixture(scope="session")
def vllm_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test Llama with head_dim 32 instead of 8: vLLM's CPU attention has no kernel for head_dim 8."""
    require_assets()
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REAL_MODEL)
    config = tiny_llama_config(
        tokenizer, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama-vllm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Tests skip torch.compile (enforce_eager): it adds about a minute to each engine start on 2 cores.
EAGER = {"enforce_eager": True}


@pytest.mark.skipif(HAS_VLLM, reason="vllm is importable here; this checks the message where it is not")
def test_vllm_backend_without_vllm_says_how_to_get_it(tiny_config):
    with pytest.raises(BackendError, match="make setup-vllm"):
        BACKENDS["vllm"](str(tiny_config.model.name_or_path), tiny_config.model, tiny_config.generate)


@pytest.mark.vllm
@needs_vllm
def test_vllm_generate_tiny_model_and_shard_rerun_is_identical(tmp_path, vllm_tiny_model_dir, prompts_file):
    tiny_model_dir = vllm_tiny_model_dir
    gen = {"backend": "vllm", "n_samples": 3, "max_new_tokens": 8, "engine_kwargs": EAGER}
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, generate=gen)
    run_stage(cfg, tmp_path)
    rows = check_shards(cfg)
    assert all(r["generator"] == f"vllm:{tiny_model_dir}" for r in rows)

    # Redo one shard from scratch: same seed and config give the same samples.
    folder = storage.round_dir(cfg, 0) / "samples"
    shard = folder / storage.shard_name(1, cfg.generate.n_shards)
    before = pq.read_table(shard)
    shard.unlink()
    storage.marker_path(shard).unlink()
    (folder / "manifest.json").unlink()
    run_stage(cfg, tmp_path)
    assert pq.read_table(shard).equals(before)
    check_shards(cfg)


@pytest.mark.vllm
@needs_vllm
def test_vllm_generate_default_model(tmp_path):
    """SmolLM2 on ~650-token prompts cut from real reviews, K = 8, two shards: a shard's prefills exceed one
    engine step's token budget (4096 on the CPU build)."""
    require_assets()
    table = pq.read_table(REAL_PROMPTS).slice(0, 200).to_pydict()
    long_text = " ".join(table["text"])
    rows = [{"id": table["snippet_id"][i], "prompt": table["prompt"][i]} for i in range(8)]
    for i, row in enumerate(rows):
        row["prompt"] = long_text[i * 3000 : (i + 1) * 3000]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = make_config(
        tmp_path,
        REAL_MODEL,
        prompts,
        generate={"backend": "vllm", "n_samples": 8, "max_new_tokens": 16, "n_shards": 2, "engine_kwargs": EAGER},
    )
    run_stage(cfg, tmp_path)
    rows = check_shards(cfg)
    assert len(rows) == 8 * 8
    assert sum(bool(r["completion"].strip()) for r in rows) >= len(rows) // 2  # a real model writes text
    assert all(len(r["prompt"]) == 3000 for r in rows)  # the long prompts went through whole


# ---------------------------------------------------------------------------------------------------------------------
# vLLM's OpenAI-compatible server on loopback, with the openai backend.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
    proc = subprocess.Popen(
        cmd, env=engine_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vllm server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    kill_server(proc)
    raise AssertionError(f"vllm server did not come up in time:\n{log.read_text()[-3000:]}")


def kill_server(proc: subprocess.Popen) -> None:
    """kill -9 the server and its engine process (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.vllm
@needs_vllm
def test_openai_backend_on_vllm_server_survives_a_killed_server(tmp_path, vllm_tiny_model_dir, prompts_file):
    tiny_model_dir = vllm_tiny_model_dir
    port = free_port()
    api = {
        "backend": "openai",
        "api_base": f"http://127.0.0.1:{port}/v1",
        "api_concurrency": 1,
        "api_max_retries": 2,
        "api_backoff_s": 0.5,
        "n_samples": 3,
        "max_new_tokens": 48,
        "n_shards": 4,
    }
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, prompts={"n_prompts": 12}, generate=api)
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")
    folder = storage.round_dir(cfg, 0) / "samples"
    first = folder / storage.shard_name(0, cfg.generate.n_shards)

    server = start_server(tiny_model_dir, port, tmp_path / "server-1.log")
    cmd = [sys.executable, "-m", "raft_data", "generate", "--config", str(config_path), "--round", "0"]
    stage = subprocess.Popen(cmd, env=engine_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not storage.shard_done(first) and stage.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert storage.shard_done(first), "the first shard never finished"
    finally:
        kill_server(server)  # while the second shard's requests are under way
    _, err = stage.communicate(timeout=120)
    assert stage.returncode == 2, err
    # one error line (the progress bar shares stderr). Killed before the shard's first answer, the endpoint is down
    # and that is the line; killed after it, the shard's failed rows pass executor.max_failed_fraction and the line
    # says so, with the first row's reason
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    why = f"{cfg.generate.api_base}/completions failed after 3 attempts; last error: "
    assert lines[0].startswith(f"error: {why}") or ("executor.max_failed_fraction" in lines[0] and why in lines[0])
    assert not (folder / "manifest.json").exists()
    done = [i for i in range(cfg.generate.n_shards) if storage.shard_done(folder / storage.shard_name(i, 4))]
    assert 0 in done and len(done) < cfg.generate.n_shards
    first_stat = first.stat()

    server = start_server(tiny_model_dir, port, tmp_path / "server-2.log")
    try:
        run_stage(cfg, tmp_path)  # the rerun redoes only the unfinished shards
        rows = check_shards(cfg)
        assert (first.stat().st_ino, first.stat().st_mtime_ns) == (first_stat.st_ino, first_stat.st_mtime_ns)
        assert all(r["source"] == "policy" for r in rows)

        chat = make_config(
            tmp_path / "chat",
            tiny_model_dir,
            prompts_file,
            generate={**api, "api_endpoint": "chat", "max_new_tokens": 8, "n_shards": 2},
        )
        run_stage(chat, tmp_path, name="chat.yaml")
        check_shards(chat)
    finally:
        kill_server(server)


@pytest.mark.vllm
@needs_vllm
def test_vllm_stop_strings_end_samples_and_are_kept(tmp_path, vllm_tiny_model_dir, prompts_file):
    """As in the transformers backend: the text ends with its first stop string, and such a sample is not
    truncated. "e" is frequent in the tiny random model's text."""
    stop = ["e", "!"]
    gen = {"backend": "vllm", "n_samples": 3, "max_new_tokens": 8, "engine_kwargs": EAGER, "stop": stop}
    cfg = make_config(tmp_path, vllm_tiny_model_dir, prompts_file, generate=gen)
    run_stage(cfg, tmp_path)
    rows = check_shards(cfg)
    ended_on_stop = 0
    for r in rows:
        ends = [r["completion"].find(s) + len(s) for s in stop if s in r["completion"]]
        if ends:
            assert min(ends) == len(r["completion"]) and not r["truncated"]
            ended_on_stop += 1
    assert ended_on_stop >= len(rows) // 2
