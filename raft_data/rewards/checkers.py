"""Answers a program can check: find the answer in a completion, compare it with the gold answer, and estimate
pass@k. The `correct` reward is 1.0 when the extracted answer matches the gold one, else 0.0; `format` is 1.0 when
an answer stands where the prompt asks for it (the extraction found one).

Extraction (`score.extract`):
    last_number  the last number in the completion: `-3`, `1,000` (= 1000), `0.5`, `3/4`; trailing punctuation is
                 not part of it
    boxed        the content of the last `\\boxed{...}`, braces balanced (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`)
    answer_line  what follows the last `Answer:` up to the end of its line
    answer_tag   the content of the last `<answer>...</answer>` (reasoning-gym's convention)
    regex        the last match of `score.extract_regex` (its first group when it has one)
Matching (`score.match`):
    exact        equal after normalising: surrounding space, `$`, trailing punctuation, case, thousands commas
    numeric      both read as numbers (integers, decimals, fractions a/b, `\\frac{a}{b}`) and equal within
                 `score.tolerance` relative to max(1, |gold|); otherwise as `exact`
    math_verify  equivalence of LaTeX / sympy expressions with the `math-verify` package (pip: raft-toolkit[math])
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

from raft_data.config import ScoreConfig
from raft_data.errors import ConfigError

CHECKERS = ("correct", "format")
log = logging.getLogger(__name__)

NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?")
TRAILING = " \t\n.,;:!?'\"`"  # punctuation that ends a sentence, not an expression


# ---------------------------------------------------------------------------------------------------------------------
# Extraction


def last_number(text: str) -> str | None:
    matches = NUMBER.findall(text)
    return matches[-1].replace(" ", "") if matches else None


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def answer_line(text: str) -> str | None:
    found = re.findall(r"answer\s*(?:is)?\s*[:=]\s*([^\n]*)", text, flags=re.IGNORECASE)
    value = found[-1].strip().rstrip(TRAILING).strip() if found else ""
    return value or None


def answer_tag(text: str) -> str | None:
    found = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


def regex_extractor(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern)

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        found = m.group(1) if compiled.groups else m.group(0)
        return None if found is None else found.strip()  # a group that took no part in the match: no answer

    return extract


def extractor(cfg: ScoreConfig) -> Callable[[str], str | None]:
    """The configured extraction: text -> the answer it states, or None."""
    if cfg.extract == "regex":
        return regex_extractor(cfg.extract_regex or "")
    return {"last_number": last_number, "boxed": boxed, "answer_line": answer_line, "answer_tag": answer_tag}[
        cfg.extract
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Comparison


def normalise(text: str) -> str:
    text = text.strip().strip("$").strip().rstrip(TRAILING).strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    return " ".join(text.lower().split())


# What as_number reads: an integer or decimal with an optional exponent of at most three digits (10**999 is cheap
# to build, 10**999999999 is not), of at most MAX_NUMBER_CHARS characters; anything else is text.
DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d{1,3})?")
MAX_NUMBER_CHARS = 1000


def _decimal(text: str) -> Fraction | None:
    if len(text) > MAX_NUMBER_CHARS or not DECIMAL.fullmatch(text):
        return None
    return Fraction(text)


def as_number(text: str) -> Fraction | None:
    """A number written as an integer, decimal, fraction a/b or \\frac{a}{b}, exactly; None for anything else
    (text, a division by zero, a number longer than MAX_NUMBER_CHARS characters)."""
    t = normalise(text)
    frac = re.fullmatch(r"\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", t)
    if frac:
        t = f"{frac.group(1)}/{frac.group(2)}"
    t = t.replace(" ", "")
    num, slash, den = t.partition("/")
    a, b = _decimal(num), _decimal(den) if slash else Fraction(1)
    if a is None or b is None or b == 0:
        return None
    return a / b


def numeric_match(extracted: str, gold: str, tolerance: float) -> bool:
    """Equal within `tolerance` relative to max(1, |gold|), compared exactly (no float overflow for a 400-digit
    number); as `exact` when either side is not a number."""
    a, b = as_number(extracted), as_number(gold)
    if a is None or b is None:
        return normalise(extracted) == normalise(gold)
    return abs(a - b) <= Fraction(tolerance) * max(Fraction(1), abs(b))


def matcher(cfg: ScoreConfig) -> Callable[[str, str], bool]:
    """The configured comparison: (extracted, gold) -> equal?"""
    if cfg.match == "exact":
        return lambda extracted, gold: normalise(extracted) == normalise(gold)
    if cfg.match == "numeric":
        return lambda extracted, gold: numeric_match(extracted, gold, cfg.tolerance)
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ConfigError(
            "score.match='math_verify' needs the math-verify package: pip install 'raft-toolkit[math]'"
        ) from None

    def boxed_expression(text: str):
        # both sides as the content of a \boxed{}: math-verify reads a boxed expression with or without LaTeX
        return parse("\\boxed{" + text + "}")

    def equivalent(extracted: str, gold: str) -> bool:
        try:
            return bool(verify(boxed_expression(gold), boxed_expression(extracted)))
        except Exception:  # an expression math-verify cannot read is not a match
            return False

    return equivalent


# ---------------------------------------------------------------------------------------------------------------------
# The rewards: plain callables with one more argument, the gold answers


def checker_reward(name: str, cfg: ScoreConfig) -> Callable[..., list[float]]:
    """`correct` or `format` as a reward `(prompts, completions, answers) -> list[float]`. A completion whose answer
    cannot be found or compared is incorrect (0.0), never an error; the returned function's `counts` says how many
    of the completions it has seen had no answer (`no_answer`) or one that could not be compared
    (`not_comparable`), and each batch with any logs a warning."""
    extract, same = extractor(cfg), matcher(cfg)
    counts = {"completions": 0, "no_answer": 0, "not_comparable": 0}

    def found_in(completion: str) -> str | None:
        try:
            return extract(completion)
        except Exception:  # an extraction that cannot read the text finds no answer
            return None

    def compared(found: str, gold: str) -> bool | None:
        try:
            return bool(same(found, gold))
        except Exception:
            return None

    def tally(batch: dict[str, int]) -> None:
        for key, n in batch.items():
            counts[key] += n
        if batch["not_comparable"]:
            log.warning(
                "%s: %d of %d completions hold an answer that could not be compared with the gold one (scored 0)",
                name,
                batch["not_comparable"],
                batch["completions"],
            )

    def correct(prompts: list[str], completions: list[str], answers: list[str | None]) -> list[float]:
        out = []
        batch = {"completions": len(completions), "no_answer": 0, "not_comparable": 0}
        for completion, gold in zip(completions, answers, strict=True):
            found = found_in(completion)
            ok = None if found is None or gold is None else compared(found, gold)
            if found is None:
                batch["no_answer"] += 1
            elif ok is None and gold is not None:
                batch["not_comparable"] += 1
            out.append(float(bool(ok)))
        tally(batch)
        return out

    def format_(prompts: list[str], completions: list[str], answers: list[str | None]) -> list[float]:
        found = [found_in(c) for c in completions]
        tally({"completions": len(completions), "no_answer": found.count(None), "not_comparable": 0})
        return [float(f is not None) for f in found]

    fn = {"correct": correct, "format": format_}[name]
    fn.counts = counts  # type: ignore[attr-defined]
    return fn


# ---------------------------------------------------------------------------------------------------------------------
# pass@k and friends


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def powers_of_two(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def majority_correct(extracted: list[str | None], correct: list[bool]) -> bool:
    """maj@k of one prompt: the most common extracted answer (ties to the first seen) is a correct one."""
    votes = Counter(e for e in extracted if e is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(e for e in extracted if e is not None and votes[e] == top)
    return any(ok for e, ok in zip(extracted, correct, strict=True) if e == winner)


def pass_metrics(rows: list[dict]) -> dict:
    """pass@k for k = 1, 2, 4, ... up to the smallest per-prompt sample count, maj@k at that k, and the share of
    prompts with mixed outcomes, over all prompts, by level and by task. `rows`: prompt_id, level, correct (bool),
    extracted (str | None), and task where rows have one, one per sample, in sample order."""
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    if not by_prompt:
        return {}

    def summary(prompts: list[list[dict]]) -> dict:
        n_min = min(len(p) for p in prompts)
        ks = powers_of_two(n_min)
        out: dict = {"prompts": len(prompts), "samples": sum(len(p) for p in prompts)}
        for k in ks:
            out[f"pass@{k}"] = sum(pass_at_k(len(p), sum(r["correct"] for r in p), k) for p in prompts) / len(prompts)
        k = ks[-1]
        out[f"maj@{k}"] = sum(
            majority_correct([r["extracted"] for r in p[:k]], [bool(r["correct"]) for r in p[:k]]) for p in prompts
        ) / len(prompts)
        out["mixed"] = sum(0 < sum(r["correct"] for r in p) < len(p) for p in prompts) / len(prompts)
        return out

    groups = list(by_prompt.values())
    result = summary(groups)
    for key, name in (("level", "by_level"), ("task", "by_task")):
        values = sorted({p[0].get(key) for p in groups if p[0].get(key) is not None})
        if values:
            result[name] = {v: summary([p for p in groups if p[0].get(key) == v]) for v in values}
    return result
