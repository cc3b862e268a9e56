"""An LLM judge as a reward: a prompt template filled with each (prompt, completion), sent to any OpenAI-compatible
endpoint (chat or completions), and the verdict read from the answer by a regex.

Run as (a reward component; `judge:` takes the fields of raft_data.config.JudgeConfig):
    raft-data score --config pipelines/imdb_positive.yaml --round 0 \\
        'score.reward=[{judge: {api_base: "http://127.0.0.1:8000/v1", model: judge, template: yes_no}}]'

Requests run `concurrency` at a time through the openai backend's `post_json` (429, 5xx, timeouts and refused
connections retried with backoff). An answer the parser cannot read, or a request that still fails, is that row's
failure: the row gets no reward and the reason in the scores' `error` column (bounded by
executor.max_failed_fraction; `score --retry-failed` asks again for those rows alone), never a silent 0. An endpoint
that answers none of the first requests stops the stage with one line.

Every answer that parses is kept in `<experiment>/judge-cache.sqlite`, keyed by the judge model, endpoint, template,
prompt, completion and sampling settings, so scoring the same samples again (a rerun, `--force`, a `rescore`) asks
nothing again. The parser is not part of the key: a new `parse:` reads the cached answers. SQLite commits each
batch in one transaction, so a process killed at any moment leaves the cache as it was before or after the batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raft_data.backends.openai import endpoint, post_json
from raft_data.config import GenerateConfig, JudgeConfig
from raft_data.errors import BackendError

CACHE_FILE = "judge-cache.sqlite"

# The built-in templates: the prompt text and the regex whose first group is the verdict.
TEMPLATES: dict[str, tuple[str, str]] = {
    "score_1_10": (
        "Rate how good the response is as a continuation of the text, from 1 (very poor) to 10 (excellent).\n\n"
        "Text:\n{prompt}\n\nResponse:\n{completion}\n\nAnswer with one number from 1 to 10.\nScore:",
        r"(?<![\d.])(10|[1-9])(?!\d|\.\d)",
    ),
    "yes_no": (
        "Is the response a good continuation of the text? Answer yes or no.\n\n"
        "Text:\n{prompt}\n\nResponse:\n{completion}\n\nAnswer (yes or no):",
        r"\b(yes|no)\b",
    ),
}
NUMBER = r"(-?\d+(?:\.\d+)?)"  # the verdict of a template given as text, unless `parse` says otherwise
VERDICTS = {"yes": 1.0, "no": 0.0}


class JudgeAnswerError(ValueError):
    """A row the judge could not score: its answer has no verdict, or its request failed after the retries."""


def template_text(cfg: JudgeConfig) -> str:
    return TEMPLATES[cfg.template][0] if cfg.template in TEMPLATES else cfg.template


def parse_pattern(cfg: JudgeConfig) -> re.Pattern:
    if cfg.parse is not None:
        pattern = cfg.parse
    else:
        pattern = TEMPLATES[cfg.template][1] if cfg.template in TEMPLATES else NUMBER
    return re.compile(pattern, re.IGNORECASE)


def judge_prompt(template: str, prompt: str, completion: str) -> str:
    """The template with the prompt and completion put in (plain replacement: braces in either stay as they are)."""
    marker = "\x00completion\x00"  # so that a prompt containing "{completion}" is not filled in turn
    return template.replace("{completion}", marker).replace("{prompt}", prompt).replace(marker, completion)


def verdict(answer: str, pattern: re.Pattern) -> float:
    """The reward an answer gives: the first match's first group, a number or yes/no (1/0)."""
    found = pattern.search(answer)
    if found is None or found.group(1) is None:
        raise JudgeAnswerError(f"judge answer {answer[:120]!r} has no verdict matching {pattern.pattern!r}")
    text = found.group(1).strip()
    if text.lower() in VERDICTS:
        return VERDICTS[text.lower()]
    try:
        value = float(text)
    except ValueError:
        raise JudgeAnswerError(f"judge verdict {text[:60]!r} is neither a number nor yes/no") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise JudgeAnswerError(f"judge verdict {text[:60]!r} is not a finite number")
    return value


def cache_key(cfg: JudgeConfig, prompt: str, completion: str) -> str:
    """What makes two requests the same: judge model, endpoint, template, the sample, and the sampling settings."""
    parts = {
        "api_base": cfg.api_base.rstrip("/"),
        "model": cfg.model,
        "endpoint": cfg.endpoint,
        "template": template_text(cfg),
        "prompt": prompt,
        "completion": completion,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# The answer cache: one SQLite file per experiment, shared by every process that scores with a judge.


def open_cache(path: Path) -> sqlite3.Connection:
    """The cache at `path`, created if missing. WAL journaling: readers and one writer at a time, and a write that
    a killed process did not commit is rolled back when the file is next opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=120, check_same_thread=False, isolation_level=None)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")
    con.execute("create table if not exists answers (key text primary key, answer text not null)")
    return con


def cache_lookup(con: sqlite3.Connection, keys: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):  # SQLite binds at most a few hundred parameters a statement
        part = keys[start : start + 500]
        marks = ",".join("?" * len(part))
        found |= dict(con.execute(f"select key, answer from answers where key in ({marks})", part).fetchall())
    return found


def cache_store(con: sqlite3.Connection, items: dict[str, str]) -> None:
    """Add answers in one transaction: all of them are in the file, or none."""
    if not items:
        return
    con.execute("begin immediate")
    try:
        con.executemany("insert or replace into answers (key, answer) values (?, ?)", list(items.items()))
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


# ---------------------------------------------------------------------------------------------------------------------
# Requests


def request_body(cfg: JudgeConfig, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": cfg.model,
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "n": 1,
    }
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def answer_text(response: dict[str, Any], cfg: JudgeConfig, url: str) -> str:
    choices = response.get("choices") or []
    if not choices:
        raise BackendError(f"{url} returned no choices")
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") if cfg.endpoint == "chat" else choice.get("text")
    return text or ""


def judge_reward(cfg: JudgeConfig, cache_dir: Path | None = None) -> Callable[[list[str], list[str]], list[float]]:
    """The judge as a reward `(prompts, completions) -> list[float]`; answers cached under `cache_dir` (the
    experiment folder) when `cfg.cache` is set. `fn.stats` counts requests sent and answers found in the cache."""
    url, headers = endpoint(cfg.api_base, cfg.endpoint, cfg.api_key_env, "judge.api_key_env")
    # post_json reads its retry settings from a generate config
    retries = dataclasses.replace(
        GenerateConfig(), api_timeout_s=cfg.timeout_s, api_max_retries=cfg.max_retries, api_backoff_s=cfg.backoff_s
    )
    template, pattern = template_text(cfg), parse_pattern(cfg)
    cache_path = cache_dir / CACHE_FILE if cache_dir is not None and cfg.cache else None
    con: list[sqlite3.Connection] = []  # opened on first use, once per process
    # this process's answers and failures, unparseable ones too: scoring a failed batch's rows one by one (the
    # score stage does, to find the bad rows) then asks nothing again
    memo: dict[str, str | BackendError] = {}
    lock = threading.Lock()
    stats = {"requests": 0, "cached": 0, "answered": 0}

    def ask(item: tuple[str, str]) -> tuple[str, str | BackendError]:
        key, text = item
        with lock:
            stats["requests"] += 1
        try:
            return key, answer_text(post_json(url, request_body(cfg, text), headers, retries), cfg, url)
        except BackendError as e:
            return key, e

    def judge(prompts: list[str], completions: list[str]) -> list[float]:
        keys = [cache_key(cfg, p, c) for p, c in zip(prompts, completions, strict=True)]
        if cache_path is not None and not con:
            con.append(open_cache(cache_path))
        unknown = sorted({k for k in keys if k not in memo})
        if con and unknown:
            found = cache_lookup(con[0], unknown)
            stats["cached"] += len(found)
            memo.update(found)
        todo: dict[str, str] = {}
        for k, p, c in zip(keys, prompts, completions, strict=True):
            if k not in memo and k not in todo:
                todo[k] = judge_prompt(template, p, c)
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            answers = dict(pool.map(ask, todo.items()))
        memo.update(answers)
        good = {k: a for k, a in answers.items() if isinstance(a, str)}
        if todo and not good and not stats["answered"]:
            raise next(iter(answers.values()))  # the endpoint answered none of the first requests: it is down
        stats["answered"] += len(good)
        readable = {}
        for k, a in good.items():
            try:
                verdict(a, pattern)
                readable[k] = a
            except JudgeAnswerError:
                pass  # not cached: --retry-failed asks again
        if con:
            cache_store(con[0], readable)
        out = []
        for k in keys:
            answer = memo[k]
            if isinstance(answer, BackendError):
                raise JudgeAnswerError(f"judge request failed: {answer}")
            out.append(verdict(answer, pattern))
        return out

    judge.stats = stats  # type: ignore[attr-defined]
    judge.reward_info = {  # type: ignore[attr-defined]
        "judge": {
            "api_base": cfg.api_base,
            "model": cfg.model,
            "endpoint": cfg.endpoint,
            "template": cfg.template if cfg.template in TEMPLATES else "custom",
            "parse": pattern.pattern,
            "cache": str(cache_path) if cache_path else None,
        }
    }
    return judge
