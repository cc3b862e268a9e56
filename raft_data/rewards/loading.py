"""The configured reward, named and loaded in one place. `score.reward` names a built-in, any importable
`module:function` with the signature `(prompts, completions) -> list[float]`, or a list of components (built-ins,
functions, Hugging Face sequence-classification reward models) whose weighted sum is the reward.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raft_data.config import ScoreConfig, reward_component_name
from raft_data.errors import ConfigError, DataError
from raft_data.rewards.builtin import BUILTIN, RewardFn
from raft_data.rewards.hf import hf_reward


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


@dataclass
class RewardComponent:
    name: str  # its column in scores/
    weight: float
    fn: RewardFn
    info: dict[str, Any] = field(default_factory=dict)


def load_components(cfg: ScoreConfig, device: str = "cpu") -> list[RewardComponent]:
    """The reward's components, each loaded once. A plain `score.reward` string is one component of weight 1."""
    if isinstance(cfg.reward, str):
        name, fn = load_reward(cfg.reward)
        return [RewardComponent(name, 1.0, fn, {"ref": cfg.reward})]
    components = []
    for c in cfg.reward:
        name = reward_component_name(c)
        if c.get("ref"):
            _, fn = load_reward(c["ref"])
            info = {"ref": c["ref"]}
        else:
            fn = hf_reward(
                c["model"],
                label=c.get("label"),
                output=c.get("output", "probability"),
                chat_template=c.get("chat_template", False),
                text=c.get("text", cfg.text),
                batch_size=c.get("batch_size", cfg.batch_size),
                max_length=c.get("max_length", 512),
                device=device,
            )
            info = dict(fn.reward_info)
        components.append(RewardComponent(name, float(c.get("weight", 1.0)), fn, info))
    return components


def reward_values(
    name: str, fn: RewardFn, prompts: list[str], completions: list[str], row: Callable[[int], str]
) -> list[float]:
    """Call a reward and check what it returns: one finite number per completion. A reward that raises, or returns
    anything else, is a DataError naming the reward, the first bad row (`row(i)` describes row i) and the value;
    the reward's own exception is kept as the cause (shown with `--debug`)."""
    try:
        values = fn(prompts, completions)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(f"reward {name!r} raised {type(e).__name__}({first!r}) on the batch from {row(0)}") from e
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise DataError(
            f"reward {name!r} returned {values!r} for the batch from {row(0)}: expected a list of "
            f"{len(prompts)} numbers, one per completion"
        )
    values = list(values)
    if len(values) != len(prompts):
        raise DataError(
            f"reward {name!r} returned {len(values)} values for {len(prompts)} completions (the batch from {row(0)})"
        )
    out = []
    for i, value in enumerate(values):
        try:
            number = None if isinstance(value, (bool, str, bytes)) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number):
            raise DataError(f"reward {name!r} returned {value!r} for {row(i)}: expected a finite number")
        out.append(number)
    return out


def combine(components: list[RewardComponent], values: dict[str, list[float]]) -> list[float]:
    """The weighted sum of the components' values, sample by sample."""
    n = len(next(iter(values.values())))
    return [math.fsum(c.weight * values[c.name][i] for c in components) for i in range(n)]


def configured_reward(cfg: ScoreConfig, device: str = "cpu") -> RewardFn:
    """The configured reward (`score.reward`, a name or a list of weighted components) as one function of
    (prompts, completions): the weighted sum the score stage writes as `reward`."""
    components = load_components(cfg, device)

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        def row(i: int) -> str:
            return f"completion {i} ({prompts[i][:40]!r} ...)"

        values = {c.name: reward_values(c.name, c.fn, prompts, completions, row) for c in components}
        return combine(components, values)

    return reward
