"""The `openai` generation backend: K samples per prompt from any OpenAI-compatible server, standard library only.

One request per prompt with `n=K`, so the server shares the prompt's prefill across the K samples. `generate.stop`
is sent as the request's `stop`; the OpenAI API returns the text without the stop string, so where the server names
the one that matched (vLLM's `stop_reason`) it is put back, as the other backends keep it. Requests run
`generate.api_concurrency` at a time; 429, 5xx, timeouts and refused connections are retried with exponential
backoff. A request that still fails (after its retries, or at once on another 4xx such as a prompt too long for the
model) costs only its prompt's K rows, written with an `error` and no sample (`generate --retry-failed` asks again
for those alone); an endpoint that answers none of the first requests stops the shard with a one-line error, and
a failed shard keeps no marker, so rerunning the stage (once the server is back) redoes exactly the unfinished
shards.

Run as (vLLM's own server on loopback, from the environment that `make setup-vllm` builds):
    .venv-vllm/bin/vllm serve assets/smollm2-135m-instruct --host 127.0.0.1 --port 8000
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 generate.backend=openai \\
        generate.api_base=http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raft_data.backends.base import Completion, SampleFn
from raft_data.config import GenerateConfig, ModelConfig
from raft_data.errors import BackendError, ConfigError

MAX_BACKOFF_S = 60.0
RETRYABLE_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


def endpoint(api_base: str, kind: str, api_key_env: str | None, setting: str) -> tuple[str, dict[str, str]]:
    """The URL of a `chat` or `completions` endpoint under `api_base`, and the request headers (a bearer key from
    the environment variable `api_key_env`, named by `setting` when it is unset)."""
    url = api_base.rstrip("/") + ("/chat/completions" if kind == "chat" else "/completions")
    headers = {"Content-Type": "application/json"}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"{setting}={api_key_env!r} names an environment variable that is unset")
        headers["Authorization"] = f"Bearer {key}"
    return url, headers


def openai_backend(model_path: str, model_cfg: ModelConfig, cfg: GenerateConfig) -> SampleFn:
    """Return a `sample` function that asks `cfg.api_base` for K completions of each prompt."""
    url, headers = endpoint(cfg.api_base, cfg.api_endpoint, cfg.api_key_env, "generate.api_key_env")
    model = cfg.api_model or model_path

    def sample(prompts: list[str], seed: int) -> list[list[Completion]]:
        # Each prompt gets its own seed; a server that seeds the K choices as seed, seed + 1, ... (vLLM does)
        # then never reuses a seed within the shard.
        bodies = [request_body(cfg, model, p, seed + i * cfg.n_samples) for i, p in enumerate(prompts)]
        # A request that fails after its retries costs its prompt's K rows (an `error` each); an endpoint that
        # answers none of the first requests is down: the shard stops and later requests are not sent.
        failures: list[BaseException] = []
        answered = threading.Event()
        stop = threading.Event()

        def ask(body: dict[str, Any]) -> dict[str, Any] | BaseException | None:
            if stop.is_set():
                return None
            try:
                response = post_json(url, body, headers, cfg, stop)
                answered.set()
                return response
            except BackendError as e:
                failures.append(e)
                if not answered.is_set() and len(failures) >= min(len(bodies), cfg.api_concurrency):
                    stop.set()
                return e

        with ThreadPoolExecutor(max_workers=cfg.api_concurrency) as pool:
            responses = list(pool.map(ask, bodies))
        if stop.is_set():
            raise failures[0]
        return [
            [Completion("", 0, False, error=str(r)) for _ in range(cfg.n_samples)]
            if isinstance(r, BaseException)
            else parse_choices(r, cfg, url)
            for r in responses
        ]

    return sample


def request_body(cfg: GenerateConfig, model: str, prompt: str, seed: int) -> dict[str, Any]:
    """The JSON body for one prompt; logprobs are asked for only to count each choice's tokens."""
    body: dict[str, Any] = {
        "model": model,
        "n": cfg.n_samples,
        "max_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": seed,
    }
    if cfg.top_k > 0:  # not part of the OpenAI API; vLLM and llama.cpp read it
        body["top_k"] = cfg.top_k
    if cfg.stop:
        body["stop"] = list(cfg.stop)
    if cfg.api_endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        body["logprobs"] = True
        body["top_logprobs"] = 0
    else:
        body["prompt"] = prompt
        body["logprobs"] = 0
    return body


def post_json(
    url: str, body: dict[str, Any], headers: dict[str, str], cfg: GenerateConfig, stop: threading.Event | None = None
) -> dict[str, Any]:
    """POST `body`, retrying 429/5xx/timeouts/refused connections with exponential backoff; other 4xx raise.
    Setting `stop` (another request of the shard failed) ends the retries early."""
    data = json.dumps(body).encode()
    for attempt in range(cfg.api_max_retries + 1):
        wait = min(cfg.api_backoff_s * 2**attempt, MAX_BACKOFF_S)
        try:
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=cfg.api_timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code != 429 and e.code < 500:
                raise BackendError(f"{url} answered HTTP {e.code}: {detail}") from None
            problem = f"HTTP {e.code}: {detail}"
            wait = _retry_after(e) if _retry_after(e) is not None else wait
        except RETRYABLE_ERRORS as e:
            problem = str(getattr(e, "reason", None) or e) or type(e).__name__
        else:
            try:
                return json.loads(payload)
            except ValueError:
                raise BackendError(f"{url} answered with a body that is not JSON: {payload[:200]!r}") from None
        if attempt == cfg.api_max_retries:
            raise BackendError(f"{url} failed after {attempt + 1} attempts; last error: {problem}")
        if stop is None:
            time.sleep(wait)
        elif stop.wait(wait):
            raise BackendError(f"{url}: stopped retrying, another request of the shard failed")
    raise AssertionError("unreachable")


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI style `{"error": {"message": ...}}`) on one line."""
    try:
        raw = e.read().decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        err = json.loads(raw).get("error", raw)
        message = err.get("message", err) if isinstance(err, dict) else err
    except (ValueError, AttributeError):
        message = raw
    text = " ".join(str(message).split()) or e.reason
    return text[:300]


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return min(float(value), MAX_BACKOFF_S) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def parse_choices(response: dict[str, Any], cfg: GenerateConfig, url: str) -> list[Completion]:
    """K Completions in choice order. `n_tokens` counts the returned logprob tokens; when a server returns none,
    it falls back to the usage total split evenly over the choices (exact only for K = 1)."""
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    if len(choices) != cfg.n_samples:
        raise BackendError(f"{url} returned {len(choices)} choices for n={cfg.n_samples}")
    usage = (response.get("usage") or {}).get("completion_tokens")
    out = []
    for choice in choices:
        if cfg.api_endpoint == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            tokens = (choice.get("logprobs") or {}).get("content")
        else:
            text = choice.get("text") or ""
            tokens = (choice.get("logprobs") or {}).get("tokens")
        if tokens is not None:
            n_tokens = len(tokens)
        elif usage is not None:
            n_tokens = round(usage / len(choices))
        else:
            raise BackendError(f"{url} returned neither logprobs nor usage, so token counts are unknown")
        matched = choice.get("stop_reason")  # vLLM: the stop string that ended the choice (an int: a stop token)
        if choice.get("finish_reason") == "stop" and isinstance(matched, str) and matched in cfg.stop:
            text += matched
        out.append(Completion(text=text, n_tokens=n_tokens, truncated=choice.get("finish_reason") == "length"))
    prompt_tokens = (response.get("usage") or {}).get("prompt_tokens")
    if out and isinstance(prompt_tokens, int):  # what the endpoint counted (and bills) for the prompt
        out[0].prompt_tokens = prompt_tokens
    return out
