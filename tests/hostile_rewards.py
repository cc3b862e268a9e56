"""Rewards that misbehave in ways a careless or hostile reward can, named in configs as
`tests.hostile_rewards:<name>` (the repository root on the path). `scripted` returns whatever `SCRIPT` holds, so a
property-based test can hand the score stage any output."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def exits(prompts: list[str], completions: list[str]) -> list[float]:
    sys.exit(0)


def raises_system_exit(prompts: list[str], completions: list[str]) -> list[float]:
    raise SystemExit(3)


def interrupted(prompts: list[str], completions: list[str]) -> list[float]:
    raise KeyboardInterrupt


def huge_int(prompts: list[str], completions: list[str]) -> list[int]:
    return [10**400] * len(completions)


def absurd(prompts: list[str], completions: list[str]) -> list[float]:
    return [1e300] * len(completions)


def matrix(prompts: list[str], completions: list[str]) -> Any:
    return np.ones((len(completions), 2))


class Sly:
    def __float__(self) -> float:
        raise SystemExit(0)

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def sly(prompts: list[str], completions: list[str]) -> list[Sly]:
    return [Sly() for _ in completions]


SCRIPT: dict[str, Any] = {"value": None}


def scripted(prompts: list[str], completions: list[str]) -> Any:
    value = SCRIPT["value"]
    if isinstance(value, BaseException):
        raise value
    return value(len(completions)) if callable(value) else value
