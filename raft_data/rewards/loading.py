"""The configured reward, named and loaded in one place. `score.reward` names a built-in, any importable
`module:function` with the signature `(prompts, completions) -> list[float]`, or a list of components (built-ins,
functions, Hugging Face sequence-classification reward models) whose weighted sum is the reward.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any

from raft_data.config import ScoreConfig, reward_component_name
from raft_data.errors import ConfigError
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


def combine(components: list[RewardComponent], values: dict[str, list[float]]) -> list[float]:
    """The weighted sum of the components' values, sample by sample."""
    n = len(next(iter(values.values())))
    return [math.fsum(c.weight * values[c.name][i] for c in components) for i in range(n)]


def configured_reward(cfg: ScoreConfig, device: str = "cpu") -> RewardFn:
    """The configured reward (`score.reward`, a name or a list of weighted components) as one function of
    (prompts, completions): the weighted sum the score stage writes as `reward`."""
    components = load_components(cfg, device)

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        values = {c.name: [float(v) for v in c.fn(prompts, completions)] for c in components}
        return combine(components, values)

    return reward
