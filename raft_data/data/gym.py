"""Prompts from a reasoning-gym task family (pip: raft-toolkit[tasks]), with what its own checker needs.

A family (`leg_counting`, `gcd`, `letter_counting`, ... with its difficulty settings) makes problem i of a seed s
from `random.Random(s + i)`, so a problem is named by its seed s + i. Train problems come from the seeds
train_seed .. train_seed + n, held-out ones from heldout_seed .. on: the two ranges must not overlap, and a held-out
problem whose question is also a train question is skipped (a small family repeats itself), so no held-out
question was ever trained on. Each row of the jsonl file:

    id        <family>:<seed>                       the problem's seed names it
    prompt    the family's question, then `instruction`
    answer    JSON text {"family", "answer", "metadata"}: what the `reasoning_gym` reward needs to call the
              family's own score_answer (rewards/gym.py)
    level     the family name
    split     train | heldout                       read with prompts.split_column: split

Beside it, `<file>.manifest.json` records the family, its settings, the seed ranges used, the counts and the
reasoning-gym version.

Run as:
    raft-data gym --family leg_counting --n-train 1000 --n-heldout 240 --out assets/gym_leg_counting.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raft_data.errors import ConfigError
from raft_data.storage import write_text

SPLITS = ("train", "heldout")


def _dataset(family: str, config: dict[str, Any], seed: int, size: int):
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError(
            "reasoning-gym tasks need the reasoning-gym package: pip install 'raft-toolkit[tasks]'"
        ) from None
    from reasoning_gym.factory import DATASETS

    if family not in DATASETS:
        raise ConfigError(f"reasoning-gym family {family!r} is unknown (see reasoning_gym.factory.DATASETS)")
    try:
        return reasoning_gym.create_dataset(family, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"reasoning-gym family {family!r} refuses the settings {config}: {e}") from None


def seed_ranges_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether the half-open seed ranges [a0, a1) and [b0, b1) share a seed."""
    return a[0] < b[1] and b[0] < a[1]


def _draw(family: str, config: dict, seed: int, n: int, skip: set[str], tries: int) -> tuple[list[dict], int]:
    """n problems with distinct questions not in `skip`, from seeds seed, seed + 1, ...; (rows, seeds used)."""
    ds = _dataset(family, config, seed, n * tries)
    rows, seen = [], set(skip)
    for i in range(n * tries):
        entry = ds[i]
        if entry["question"] in seen:
            continue
        seen.add(entry["question"])
        rows.append({"seed": seed + i, "entry": entry})
        if len(rows) == n:
            return rows, i + 1
    raise ConfigError(
        f"reasoning-gym family {family!r} with {config} gave only {len(rows)} distinct questions from "
        f"{n * tries} seeds starting at {seed}, not {n}: ask for fewer or widen its settings"
    )


def gym_problems(
    family: str,
    config: dict[str, Any] | None = None,
    train_seed: int = 0,
    heldout_seed: int = 1_000_000,
    n_train: int = 1000,
    n_heldout: int = 240,
    instruction: str = "",
    tries: int = 4,
) -> tuple[list[dict], dict[str, Any]]:
    """(rows, record): train rows then held-out rows as described above, and what the manifest records."""
    config = dict(config or {})
    if n_train < 1 or n_heldout < 1:
        raise ConfigError(f"reasoning-gym: n_train={n_train} and n_heldout={n_heldout} must both be >= 1")
    # the widest ranges a draw may use, so overlap is refused before anything is generated
    train_range, heldout_range = (
        (train_seed, train_seed + n_train * tries),
        (heldout_seed, heldout_seed + n_heldout * tries),
    )
    if seed_ranges_overlap(train_range, heldout_range):
        raise ConfigError(
            f"reasoning-gym: train seeds [{train_range[0]}, {train_range[1]}) and held-out seeds "
            f"[{heldout_range[0]}, {heldout_range[1]}) overlap: move heldout_seed to {train_range[1]} or beyond"
        )
    train, used_train = _draw(family, config, train_seed, n_train, set(), tries)
    heldout, used_heldout = _draw(
        family, config, heldout_seed, n_heldout, {r["entry"]["question"] for r in train}, tries
    )
    rows = []
    for split, drawn in (("train", train), ("heldout", heldout)):
        for r in drawn:
            entry = r["entry"]
            answer = {"family": family, "answer": str(entry["answer"]), "metadata": entry.get("metadata", {})}
            rows.append(
                {
                    "id": f"{family}:{r['seed']}",
                    "prompt": entry["question"].rstrip() + instruction,
                    "answer": json.dumps(answer, ensure_ascii=False, sort_keys=True, default=str),
                    "level": family,
                    "split": split,
                }
            )
    from importlib.metadata import version

    record = {
        "family": family,
        "config": config,
        "instruction": instruction,
        "reasoning_gym_version": version("reasoning-gym"),
        "train_seeds": [train_seed, train_seed + used_train],
        "heldout_seeds": [heldout_seed, heldout_seed + used_heldout],
        "n_train": n_train,
        "n_heldout": n_heldout,
        "heldout_skipped": used_heldout - n_heldout,  # repeated questions, or questions also in train
    }
    return rows, record


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def write_gym(path: Path, family: str, **kwargs: Any) -> int:
    """Write the problems as jsonl and the record beside it as `<file>.manifest.json` (atomically); returns how
    many problems."""
    rows, record = gym_problems(family, **kwargs)
    write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)
    write_text(json.dumps(record, indent=2) + "\n", manifest_path(path))
    return len(rows)
