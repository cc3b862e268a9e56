"""Rewards that misbehave, named in configs as `tests.rewards_for_tests:<name>` (the repository root on the path)."""

from __future__ import annotations

import time

from raft_data.rewards.builtin import vader


def raises(prompts: list[str], completions: list[str]) -> list[float]:
    raise ValueError("the reward server is down")


def strings(prompts: list[str], completions: list[str]) -> list:
    return ["high"] * len(completions)


def nones(prompts: list[str], completions: list[str]) -> list:
    return [None] * len(completions)


def scalar(prompts: list[str], completions: list[str]) -> float:
    return 0.5


def too_few(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0] * (len(completions) - 1)


def nan(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0] * (len(completions) - 1) + [float("nan")]


def slow_vader(prompts: list[str], completions: list[str]) -> list[float]:
    """VADER, a second per batch: slow enough to kill the score stage between two shards."""
    time.sleep(1.0)
    return vader(prompts, completions)


def fails_on_sequel(prompts: list[str], completions: list[str]) -> list[float]:
    """VADER, but raising on any batch with a prompt about a sequel while RAFT_TEST_SEQUEL_FAILS=1: one bad row."""
    import os

    if os.environ.get("RAFT_TEST_SEQUEL_FAILS") == "1" and any("sequel" in p for p in prompts):
        raise ValueError("cannot score sequels")
    return vader(prompts, completions)


def planted(prompts: list[str], completions: list[str]) -> list[float]:
    """The number a test planted in the completion's text as `b=<value>`."""
    import re

    return [float(re.search(r"b=(\S+)", c).group(1)) for c in completions]
