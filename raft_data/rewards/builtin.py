"""Built-in rewards: plain callables `(prompts, completions) -> list[float]`."""

from __future__ import annotations

from collections.abc import Callable

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
