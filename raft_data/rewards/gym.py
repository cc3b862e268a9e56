"""The `reasoning_gym` reward: a completion scored by its task family's own `score_answer` (pip:
raft-toolkit[tasks]). The gold answer of each prompt is the JSON text raft_data/data/gym.py writes,
{"family", "answer", "metadata"}: the entry the family's checker reads. The answer is first taken out of the
completion with `score.extract` (`answer_tag`, the family's own <answer>...</answer>, or last_number, ...); none
found is scored as an empty answer.

Two columns come of it: `reasoning_gym`, the family's score in [0, 1] (some give partial credit), which is the
reward, and `correct` (weight 0: it adds nothing to the reward), 1.0 when that score is 1, so pass@k, the
`distinct_correct` selection and the round lines work as they do with the `correct` checker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache

from raft_data.config import ScoreConfig
from raft_data.errors import ConfigError, DataError, shown
from raft_data.rewards.checkers import extractor

NAME = "reasoning_gym"


@cache
def family_scorer(family: str) -> Callable:
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError(
            "score.reward=reasoning_gym needs the reasoning-gym package: pip install 'raft-toolkit[tasks]'"
        ) from None
    try:
        return reasoning_gym.get_score_answer_fn(family)
    except ValueError:
        raise DataError(f"reasoning-gym family {family!r} (in a gold answer) is unknown") from None


def gold_entry(answer: str | None, prompt: str) -> tuple[str, dict]:
    """(family, entry) from a gold answer cell: the entry as the family made it, question aside."""
    try:
        gold = json.loads(answer or "")
        family, entry = gold["family"], {"question": prompt, "answer": gold["answer"], "metadata": gold["metadata"]}
    except (json.JSONDecodeError, TypeError, KeyError):
        raise DataError(
            f"score.reward=reasoning_gym: the gold answer {shown(answer, 60)} is not the JSON text "
            '{"family", "answer", "metadata"} that `raft-data gym` writes'
        ) from None
    return family, entry


def gym_rewards(cfg: ScoreConfig) -> tuple[Callable[..., list[float]], Callable[..., list[float]]]:
    """(score, correct): rewards `(prompts, completions, answers) -> list[float]`, the family's score and 1.0 where
    it is full marks."""
    extract = extractor(cfg)

    def reasoning_gym(prompts: list[str], completions: list[str], answers: list[str | None]) -> list[float]:
        out = []
        for i, (completion, gold) in enumerate(zip(completions, answers, strict=True)):
            family, entry = gold_entry(gold, prompts[i] if i < len(prompts) else "")
            try:
                found = extract(completion)
            except Exception:  # an extraction that cannot read the text finds no answer
                found = None
            value = float(family_scorer(family)(answer=found or "", entry=entry))
            out.append(min(1.0, max(0.0, value)))
        return out

    def correct(prompts: list[str], completions: list[str], answers: list[str | None]) -> list[float]:
        return [float(v >= 1.0) for v in reasoning_gym(prompts, completions, answers)]

    return reasoning_gym, correct
