"""Reward functions: plain callables `(prompts, completions) -> list[float]`.

`score.reward` names a built-in below or any importable `module:function` with that signature.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from raft_data.config import ConfigError

RewardFn = Callable[[list[str], list[str]], list[float]]


def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(prompts: list[str], completions: list[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] of the whole review: prompt followed by completion."""
    analyzer = _vader()
    return [analyzer.polarity_scores(p + c)["compound"] for p, c in zip(prompts, completions, strict=True)]


def vader_completion(prompts: list[str], completions: list[str]) -> list[float]:
    """VADER compound sentiment of the completion alone."""
    analyzer = _vader()
    return [analyzer.polarity_scores(c)["compound"] for c in completions]


def length(prompts: list[str], completions: list[str]) -> list[float]:
    """Completion length in characters; a deliberately hackable reward, useful to see reward hacking."""
    return [float(len(c)) for c in completions]


BUILTIN: dict[str, RewardFn] = {"vader": vader, "vader_completion": vader_completion, "length": length}


def load_reward(name: str) -> tuple[str, RewardFn]:
    """(component name, callable) for a built-in name or `module:function`. Importing a module runs its code,
    so only name modules you trust."""
    if name in BUILTIN:
        return name, BUILTIN[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"score.reward={name!r} is unknown: use one of {', '.join(BUILTIN)} or an importable module:function"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"score.reward={name!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ConfigError(f"score.reward={name!r} is not callable")
    return attr, fn
