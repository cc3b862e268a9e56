"""Code that runs its tests: the `code_pass` and `code_pass_fraction` rewards.

A completion's program is found, run with the problem's tests in the sandbox (raft_data/rewards/sandbox.py), and
scored: `code_pass` is 1.0 when the program runs and every test passes, else 0.0; `code_pass_fraction` is the share
of tests passed. Both read the same runs (a program is run once per score stage, not once per component):

    score:
      reward:
        - {ref: code_pass, weight: 1.0}
        - {ref: code_pass_fraction, weight: 0.0}    # its own column in scores/, not part of the reward

The gold answer (prompts.answer_column) holds the tests, in one of two forms:
    - plain Python: one test, passed when it runs without an exception after the program
    - a JSON object {"tests": [...], "entry_point": "name", "setup": "...", "prefix": "..."}: each test is Python
      run after the program and `setup` in a copy of the program's namespace, with `candidate` bound to the
      function `entry_point` when given; `prefix` is code put before the completion (a HumanEval prompt: imports, a
      function's signature and docstring), so that a completion that continues the function is a program

The program: with a prefix, prefix + the completion's indented lines up to the first line that is not (the
function's body; a stop string such as `\\ndef ` kept at its end is cut off), unless the completion holds a fenced
code block or starts unindented: then prefix + the code (a block that defines the whole function replaces the
prefix's). Without a prefix: the first ```python block, else the first fenced block, else the whole completion.
A program that does not compile, raises, times out or breaks a limit scores 0.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable

from raft_data.config import ScoreConfig
from raft_data.errors import DataError, shown
from raft_data.rewards.sandbox import Limits, Outcome, isolation, run_many

CODE_CHECKERS = ("code_pass", "code_pass_fraction")
log = logging.getLogger(__name__)

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
ANSWER_KEYS = ("tests", "entry_point", "setup", "prefix")


def extract_code(completion: str) -> str:
    """The first ```python block (py, python3 too), else the first fenced block, else the whole text. A block left
    open runs to the end of the text."""
    blocks = FENCE.findall(completion)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else completion


def parse_tests(answer: str | None) -> dict:
    """The tests of one gold answer: {tests, entry_point, setup, prefix}; a DataError naming the value when the
    answer is neither plain Python nor a well-formed JSON object."""
    if answer is None:
        raise DataError("code_pass: a prompt has no tests: prompts.answer_column must hold them for every prompt")
    text = answer.strip()
    if not text.startswith("{"):
        return {"tests": [answer], "entry_point": None, "setup": "", "prefix": ""}
    try:
        spec = json.loads(text)
    except ValueError:
        raise DataError(f"code_pass: the answer {shown(answer)} starts with '{{' but is not JSON") from None
    bad = "a JSON object with tests (a non-empty list of strings) and optional entry_point, setup, prefix strings"
    if not isinstance(spec, dict) or set(spec) - set(ANSWER_KEYS):
        raise DataError(f"code_pass: the answer {shown(answer)} is not {bad}")
    tests = spec.get("tests")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise DataError(f"code_pass: the answer {shown(answer)} is not {bad}")
    for key in ("entry_point", "setup", "prefix"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise DataError(f"code_pass: the answer {shown(answer)} is not {bad}")
    return {"tests": tests, "entry_point": spec.get("entry_point") or None, "setup": spec.get("setup") or "",
            "prefix": spec.get("prefix") or ""}  # fmt: skip


def continuation(completion: str) -> str | None:
    """The body a completion adds to a prefix that ends inside a function: its lines up to the first one that is
    not indented (`def` of the next function, `print(...)`, a stop string kept in the text); None when it does not
    start indented (it is a whole program, not a continuation)."""
    lines = completion.split("\n")
    body = False
    for i, line in enumerate(lines):
        if line.strip() and not line[0].isspace():
            return "\n".join(lines[:i]) + "\n" if body else None
        body = body or bool(line.strip())
    return completion


def program_of(completion: str, prefix: str = "") -> str:
    """The program a completion stands for (see the module docstring)."""
    if not prefix:
        return extract_code(completion)
    body = None if FENCE.search(completion) else continuation(completion)
    return prefix + body if body is not None else prefix + "\n" + extract_code(completion)


def limits_of(cfg: ScoreConfig) -> Limits:
    return Limits(
        timeout=cfg.code_timeout,
        cpu_seconds=max(1, int(cfg.code_timeout + 0.999)),
        memory_mb=cfg.code_memory_mb,
    )


# Outcomes of recent runs, shared by both components (and the eval's pass@k): a program is run once.
_CACHE: OrderedDict[str, Outcome] = OrderedDict()
_CACHE_SIZE = 65536
_LOCK = threading.Lock()


def outcomes(jobs: list[dict], limits: Limits, workers: int = 0) -> list[Outcome]:
    """Each job's outcome, from the cache or run in the sandbox (`workers` at a time)."""
    keys = [json.dumps([job, limits.__dict__], sort_keys=True) for job in jobs]
    with _LOCK:
        found = {k: _CACHE[k] for k in keys if k in _CACHE}
    todo = {k: job for k, job in zip(keys, jobs, strict=True) if k not in found}
    if todo:
        fresh = run_many(list(todo.values()), limits, workers)
        found |= dict(zip(todo, fresh, strict=True))
        with _LOCK:
            for k, outcome in zip(todo, fresh, strict=True):
                _CACHE[k] = outcome
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return [found[k] for k in keys]


def code_reward(name: str, cfg: ScoreConfig) -> Callable[..., list[float]]:
    """`code_pass` or `code_pass_fraction` as a reward `(prompts, completions, answers) -> list[float]`."""
    limits, workers = limits_of(cfg), cfg.code_workers
    if isolation() != "namespaces":
        log.warning("%s: no namespaces here (unshare refused): code runs with resource limits and audit hooks only",
                    name)  # fmt: skip

    def reward(prompts: list[str], completions: list[str], answers: list[str | None]) -> list[float]:
        specs = [parse_tests(a) for a in answers]
        jobs = [
            {
                "program": program_of(c, s["prefix"]),
                "tests": s["tests"],
                "entry_point": s["entry_point"],
                "setup": s["setup"],
            }  # fmt: skip
            for c, s in zip(completions, specs, strict=True)
        ]
        results = outcomes(jobs, limits, workers)
        stuck = sum(r.status == "timeout" for r in results)
        if stuck:
            log.info("%s: %d of %d programs ran out of time (scored 0)", name, stuck, len(results))
        if name == "code_pass":
            return [float(r.all_passed) for r in results]
        return [r.fraction for r in results]

    return reward


def without_majority(metrics: dict) -> dict:
    """pass@k metrics less maj@k, which means nothing for programs (there is no answer to vote on)."""
    out = {k: v for k, v in metrics.items() if not k.startswith("maj@")}
    if "by_level" in out:
        out["by_level"] = {lv: without_majority(m) for lv, m in out["by_level"].items()}
    return out
