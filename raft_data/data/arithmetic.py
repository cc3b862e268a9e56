"""Arithmetic problems with checkable answers, made from a seed: the bundled reasoning task.

Each problem is a prompt ("What is 7 + 5? Answer with the number only."), its answer ("12") and its level:
    sum_1d     a + b, single digits
    sum_2d1d   a two-digit number plus a single digit
    sum_2d2d   two two-digit numbers
    mixed_1d   a + b * c, single digits (precedence)
Single-digit sums are all 100 pairs (a, b); the other levels draw pairs without repeats. The same seed writes the
same file, so `make setup` on any machine makes the same problems.

Run as:
    raft-data arithmetic --out assets/arithmetic.jsonl          # what `make setup` runs
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from raft_data.errors import ConfigError
from raft_data.storage import write_text

QUESTION = "What is {expr}? Answer with the number only."


def _sum(rng: random.Random, a_range: range, b_range: range, n: int) -> list[tuple[str, int]]:
    pairs = [(a, b) for a in a_range for b in b_range]
    rng.shuffle(pairs)
    return [(f"{a} + {b}", a + b) for a, b in pairs[:n]]


def _mixed(rng: random.Random, n: int) -> list[tuple[str, int]]:
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]
    rng.shuffle(triples)
    return [(f"{a} + {b} * {c}", a + b * c) for a, b, c in triples[:n]]


LEVELS = {
    "sum_1d": lambda rng, n: _sum(rng, range(10), range(10), n),
    "sum_2d1d": lambda rng, n: _sum(rng, range(10, 100), range(10), n),
    "sum_2d2d": lambda rng, n: _sum(rng, range(10, 100), range(10, 100), n),
    "mixed_1d": _mixed,
}


def arithmetic_problems(n_per_level: int = 400, seed: int = 0, levels: list[str] | None = None) -> list[dict]:
    """Rows `id`, `prompt`, `answer`, `level`, level by level; ids name the level and the problem."""
    names = levels or list(LEVELS)
    unknown = [name for name in names if name not in LEVELS]
    if unknown:
        raise ConfigError(f"arithmetic level {unknown[0]!r} is unknown: choose from {', '.join(LEVELS)}")
    rows = []
    for name in names:
        rng = random.Random(f"{seed}:{name}")
        for expr, value in LEVELS[name](rng, n_per_level):
            rows.append({"id": f"{name}:{expr.replace(' ', '')}", "prompt": QUESTION.format(expr=expr),
                         "answer": str(value), "level": name})  # fmt: skip
    return rows


def write_arithmetic(path: Path, n_per_level: int = 400, seed: int = 0) -> int:
    """Write the problems as jsonl (atomically); returns how many."""
    rows = arithmetic_problems(n_per_level, seed)
    write_text("".join(json.dumps(r) + "\n" for r in rows), path)
    return len(rows)
