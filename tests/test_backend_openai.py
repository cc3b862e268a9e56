"""The openai backend against a small OpenAI-style server written here (stdlib http.server on 127.0.0.1).

The server answers from a script of status codes, records every request, and makes completions that name their
prompt and choice, so the tests can check order, retries, errors and the shards on disk.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.cli.stages import generate_command
from raft_data.errors import BackendError, ConfigError, StageError
from raft_data.stages.generate import generate

from .conftest import make_config


class FakeServer:
    def __init__(self, statuses: list[int] | None = None, default_status: int = 200) -> None:
        self.statuses = list(statuses or [])  # consumed one per request, then default_status
        self.default_status = default_status
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, body)
        self.lock = threading.Lock()
        self.refused_prompts: set[str] = set()  # answered 400 whatever the script says (a prompt too long, say)

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else self.default_status

    def answer(self, path: str, body: dict) -> dict:
        prompt = body["messages"][0]["content"] if path.endswith("/chat/completions") else body["prompt"]
        choices = []
        for k in reversed(range(body["n"])):  # out of order on purpose: the client must sort by index
            truncated = k % 2 == 0
            n_tokens = body["max_tokens"] if truncated else 2
            text = f" [{prompt}|{k}]"
            tokens = [f"t{i}" for i in range(n_tokens)]
            if path.endswith("/chat/completions"):
                logprobs = {"content": [{"token": t, "logprob": -1.0, "top_logprobs": []} for t in tokens]}
                choice = {"index": k, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}
            else:
                choice = {"index": k, "text": text, "logprobs": {"tokens": tokens}}
            choices.append({**choice, "finish_reason": "length" if truncated else "stop"})
        usage = {"completion_tokens": 1, "prompt_tokens": len(prompt.split())}
        return {"id": "x", "object": "text_completion", "choices": choices, "usage": usage}


@pytest.fixture
def fake_server() -> Iterator[tuple[FakeServer, str]]:
    state = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append((self.path, dict(self.headers), body))
            status = state.next_status()
            if body.get("prompt") in state.refused_prompts:
                status = 400
            if status == 200:
                payload = state.answer(self.path, body)
            else:
                payload = {"error": {"message": f"scripted failure {status}", "type": "invalid_request_error"}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def api_config(tmp_path: Path, prompts_file: Path, base: str, **generate_fields: object):
    fields = {
        "backend": "openai",
        "api_base": base,
        "api_model": "served-model",
        "api_backoff_s": 0.01,
        "api_max_retries": 3,
        "api_concurrency": 3,
        "n_samples": 3,
        "max_new_tokens": 5,
        **generate_fields,
    }
    return make_config(tmp_path, tmp_path / "unused-model", prompts_file, generate=fields)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_generate_retries_429_then_writes_shards(tmp_path, prompts_file, fake_server, monkeypatch, endpoint):
    state, base = fake_server
    state.statuses = [429, 503]  # the first two requests fail once each, then everything succeeds
    monkeypatch.setenv("TEST_API_KEY", "sk-test")
    cfg = api_config(tmp_path, prompts_file, base, api_endpoint=endpoint, api_key_env="TEST_API_KEY")

    manifest = generate(cfg, 0)

    folder = storage.round_dir(cfg, 0) / "samples"
    rows = [r for f in storage.shard_files(folder) for r in pq.read_table(f).to_pylist()]
    assert manifest["counts"]["samples"] == len(rows) == 8 * 3
    assert len(state.requests) == 8 + 2
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    for samples in by_prompt.values():
        assert [r["sample_idx"] for r in samples] == [0, 1, 2]
        for r in samples:
            assert r["completion"] == f" [{r['prompt']}|{r['sample_idx']}]"
            assert r["truncated"] == (r["sample_idx"] % 2 == 0)
            assert r["n_tokens"] == (5 if r["truncated"] else 2)
            assert r["n_tokens"] <= cfg.generate.max_new_tokens
    path_suffix = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    assert {path for path, _, _ in state.requests} == {path_suffix}
    assert all(headers["Authorization"] == "Bearer sk-test" for _, headers, _ in state.requests)
    bodies = [body for _, _, body in state.requests]
    assert all(b["n"] == 3 and b["max_tokens"] == 5 and b["model"] == "served-model" for b in bodies)
    assert all("top_k" not in b for b in bodies)  # top_k=0 (off) is not sent
    seeds = {(json.dumps(b.get("prompt") or b["messages"]), b["seed"]) for b in bodies}
    assert len({seed for _, seed in seeds}) == 8  # one seed per prompt, the same on a retried request


def test_client_error_is_one_line_and_leaves_no_shard(tmp_path, prompts_file, fake_server, capsys):
    state, base = fake_server
    state.default_status = 400
    cfg = api_config(tmp_path, prompts_file, base)
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(cfg.to_yaml(), encoding="utf-8")

    with pytest.raises(SystemExit) as exit_info:
        generate_command(["--config", str(config_path), "--round", "0"])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # the progress bar shares stderr; the error is its last line, whole
    assert err.endswith(f"error: {base}/completions answered HTTP 400: scripted failure 400\n")
    assert err.count("error:") == 1
    folder = storage.round_dir(cfg, 0) / "samples"
    assert not (folder / "manifest.json").exists()
    assert not list(folder.glob("*.parquet")) and not list(folder.glob("*.done"))
    # No retry on a 4xx: each prompt of the first shard is asked at most once. An endpoint that answers none of
    # the first api_concurrency requests is down: the shard's requests not yet started are never sent.
    prompts_asked = [body["prompt"] for _, _, body in state.requests]
    assert 1 <= len(prompts_asked) <= cfg.generate.api_concurrency
    assert len(set(prompts_asked)) == len(prompts_asked)


def test_server_errors_give_up_after_retries(tmp_path, prompts_file, fake_server):
    state, base = fake_server
    state.default_status = 502
    cfg = api_config(tmp_path, prompts_file, base, api_max_retries=2, api_concurrency=1, n_shards=1)

    with pytest.raises(BackendError, match=r"failed after 3 attempts; last error: HTTP 502: scripted failure 502"):
        generate(cfg, 0)
    assert len(state.requests) == 3  # one prompt, three attempts, then the shard stops


def test_refused_connection_is_retried_then_reported(tmp_path, prompts_file):
    cfg = api_config(tmp_path, prompts_file, "http://127.0.0.1:9/v1", api_max_retries=1, n_shards=1)
    with pytest.raises(BackendError, match=r"failed after 2 attempts; last error: .*refused"):
        generate(cfg, 0)


def test_missing_api_key_variable_is_a_config_error(tmp_path, prompts_file, fake_server, monkeypatch):
    _, base = fake_server
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    cfg = api_config(tmp_path, prompts_file, base, api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        generate(cfg, 0)


def test_stop_strings_are_sent_and_a_stopped_choice_is_not_truncated(tmp_path, prompts_file, fake_server):
    """The request carries `stop`; a choice that finished on it (`finish_reason: "stop"`) is not truncated, and the
    stop string a vLLM server names in `stop_reason` is put back at the end of the text."""
    state, base = fake_server
    answer = state.answer

    def stopping(path: str, body: dict) -> dict:  # end the choices that did not hit max_tokens at the "|"
        response = answer(path, body)
        for choice in response["choices"]:
            if choice["finish_reason"] == "stop":
                choice["text"] = choice["text"].split("|")[0]
                choice["stop_reason"] = "|" if choice["index"] == 1 else None  # choice 3: a server that does not say
        return response

    state.answer = stopping
    cfg = api_config(tmp_path, prompts_file, base, n_samples=4, stop=["|", "\n"])

    generate(cfg, 0)

    assert all(body["stop"] == ["|", "\n"] for _, _, body in state.requests)
    rows = [
        r for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples") for r in pq.read_table(f).to_pylist()
    ]
    assert len(rows) == 8 * 4
    for r in rows:
        full = f" [{r['prompt']}|{r['sample_idx']}]"
        expected = {0: full, 1: f" [{r['prompt']}|", 2: full, 3: f" [{r['prompt']}"}[r["sample_idx"]]
        assert r["completion"] == expected
        assert r["truncated"] == (r["sample_idx"] % 2 == 0)
        assert r["n_tokens"] == (5 if r["truncated"] else 2)


def test_a_refused_prompt_costs_its_rows_only_and_retry_failed_redoes_them(tmp_path, prompts_file, fake_server):
    """One prompt the endpoint refuses (HTTP 400): its K rows carry an `error` and no sample, the round goes on,
    they are never scored or selected, and `--retry-failed` asks again for that prompt alone."""
    from raft_data.stages.score import score
    from raft_data.stages.select import select

    state, base = fake_server
    state.refused_prompts = {"The film is a"}
    cfg = api_config(tmp_path, prompts_file, base)
    cfg.executor.max_failed_fraction = 0.5
    manifest = generate(cfg, 0)
    assert manifest["counts"]["failed"] == 3 and manifest["cost"]["api_prompt_tokens"] > 0
    rows = [
        r for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples") for r in pq.read_table(f).to_pylist()
    ]
    failed = [r for r in rows if r["error"] is not None]
    assert len(failed) == 3 and {r["prompt"] for r in failed} == {"The film is a"}
    assert all(r["completion"] == "" and "HTTP 400" in r["error"] for r in failed)
    assert score(cfg, 0)["counts"]["failed"] == 3
    chosen = select(cfg, 0)
    assert chosen["counts"]["failed"] == 3 and chosen["counts"]["selected"] == 7  # the refused prompt has none

    asked = len(state.requests)
    state.refused_prompts = set()
    again = generate(cfg, 0, retry_failed=True)
    assert "failed" not in again["counts"] and len(state.requests) == asked + 1  # that prompt alone
    rows = [
        r for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples") for r in pq.read_table(f).to_pylist()
    ]
    assert all(r["error"] is None for r in rows) and len(rows) == 24
    with pytest.raises(StageError, match="scores is stale|samples .* changed"):
        select(cfg, 0, force=True)  # the scores were made from the samples before the retry
    score(cfg, 0)  # a plain rerun redoes the stale scores
    assert select(cfg, 0, force=True)["counts"]["selected"] == 8


def test_too_many_failed_rows_stop_the_stage_with_one_line(tmp_path, prompts_file, fake_server):
    state, base = fake_server
    state.refused_prompts = {"The film is a"}  # its 3 rows are a third or more of its shard: over the default 1%
    cfg = api_config(tmp_path, prompts_file, base)
    with pytest.raises(StageError) as refused:
        generate(cfg, 0)
    message = str(refused.value)
    assert "\n" not in message and "executor.max_failed_fraction=0.01" in message
    match = re.search(r"3 of (\d+) rows of (shard-\d+-of-\d+\.parquet) failed", message)
    assert match and int(match.group(1)) in (6, 9)
    assert not (storage.round_dir(cfg, 0) / "samples" / match.group(2)).exists()  # the shard is not written
