"""The configured reward, named and loaded in one place. `score.reward` names a built-in, any importable
`module:function` with the signature `(prompts, completions) -> list[float]`, or a list of components (built-ins,
functions, Hugging Face sequence-classification reward models, LLM judges) whose weighted sum is the reward.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft_data.config import ScoreConfig, judge_config, reward_component_name
from raft_data.errors import ConfigError, DataError, shown
from raft_data.rewards.builtin import BUILTIN, RewardFn
from raft_data.rewards.checkers import CHECKERS, checker_reward
from raft_data.rewards.code import CODE_CHECKERS, code_reward
from raft_data.rewards.gym import NAME as GYM
from raft_data.rewards.gym import gym_rewards
from raft_data.rewards.hf import hf_reward
from raft_data.rewards.judge import judge_reward

# A module:function reference: a dotted module path of Python names, then a function name (never a file path).
REWARD_REF = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)")
# A reward outside this bound is a bug in the reward: the weighted sum of such values could overflow.
MAX_REWARD = 1e12
# Whatever a reward's own code raises is contained as its failure, SystemExit and KeyboardInterrupt included: it
# must not end the stage silently (SystemExit(0) would exit with status 0 and no manifest).
CONTAINED = (BaseException,)


def load_reward(name: str, cfg: ScoreConfig | None = None) -> tuple[str, RewardFn]:
    """(component name, callable) for a built-in name, a checker of answers (`correct`, `format`, configured by
    `cfg`'s extract and match) or `module:function`. Importing a module runs its code, so only name modules you
    trust."""
    if name in BUILTIN:
        return name, BUILTIN[name]
    if name in CHECKERS:
        return name, checker_reward(name, cfg or ScoreConfig())
    if name in CODE_CHECKERS:  # code run with its tests in the sandbox
        return name, code_reward(name, cfg or ScoreConfig())
    if name == GYM:
        return name, gym_rewards(cfg or ScoreConfig())[0]
    ref = REWARD_REF.fullmatch(name)
    if ref is None:
        known = ", ".join([*BUILTIN, *CHECKERS, *CODE_CHECKERS, GYM])
        raise ConfigError(
            f"score.reward={shown(name)} is unknown: use one of {known} or an importable module:function "
            "(a dotted module path of Python names, not a file path)"
        )
    module_name, attr = ref.groups()
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"score.reward={name!r} cannot be imported: {_first_line(e)}") from None
    except CONTAINED as e:  # the module's own code failed while it was imported
        raise ConfigError(f"score.reward={name!r} cannot be imported: its module raised {_described(e)}") from e
    if not callable(fn):
        raise ConfigError(f"score.reward={name!r} is not callable")
    return attr, fn


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters; never an error itself."""
    try:
        text = str(e)
    except Exception:
        text = ""
    return (text.strip().splitlines() or [""])[0][:200]


def _described(e: BaseException) -> str:
    return f"{type(e).__name__}({_first_line(e)!r})"


@dataclass
class RewardComponent:
    name: str  # its column in scores/
    weight: float
    fn: RewardFn
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_answers(self) -> bool:
        """A reward that takes the gold answers: a third argument named `answers` (the checkers do)."""
        return takes_answers(self.fn)


def takes_answers(fn: Callable) -> bool:
    try:
        return "answers" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def load_components(cfg: ScoreConfig, device: str = "cpu", cache_dir: Path | None = None) -> list[RewardComponent]:
    """The reward's components, each loaded once. A plain `score.reward` string is one component of weight 1.
    `cache_dir` (the experiment folder) holds an LLM judge's answer cache; None keeps no cache on disk."""
    if isinstance(cfg.reward, str):
        if cfg.reward == GYM:
            return gym_components(cfg, 1.0)
        name, fn = load_reward(cfg.reward, cfg)
        return [RewardComponent(name, 1.0, fn, {"ref": cfg.reward})]
    components = []
    for c in cfg.reward:
        name = reward_component_name(c)
        if c.get("ref") == GYM:
            components += gym_components(cfg, float(c.get("weight", 1.0)))
            continue
        if c.get("ref"):
            _, fn = load_reward(c["ref"], cfg)
            info = {"ref": c["ref"]}
        elif c.get("judge"):
            fn = judge_reward(judge_config(f"score.reward[{len(components)}].judge", c["judge"]), cache_dir)
            info = dict(fn.reward_info)
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


def load_routes(
    cfg: ScoreConfig, device: str = "cpu", cache_dir: Path | None = None
) -> dict[str | None, list[RewardComponent]]:
    """Each task's reward components (score.tasks, for the rows of that task), or {None: the one reward of every
    row} without tasks."""
    routes: dict[str | None, list[RewardComponent]] = {}
    for task, score in cfg.by_task().items():
        try:
            routes[task] = load_components(score, device, cache_dir)
        except ConfigError as e:
            if task is None:
                raise
            raise ConfigError(f"score.tasks.{task}: {e}") from e.__cause__
    return routes


def route_names(routes: dict[str | None, list[RewardComponent]]) -> list[str]:
    """Every component column of the routes, in order of first appearance."""
    return list(dict.fromkeys(c.name for components in routes.values() for c in components))


def gym_components(cfg: ScoreConfig, weight: float) -> list[RewardComponent]:
    """The `reasoning_gym` reward: the family's score (the reward, times `weight`) and `correct` beside it with
    weight 0, the column pass@k and the distinct_correct selection read."""
    score_fn, correct_fn = gym_rewards(cfg)
    return [
        RewardComponent(GYM, weight, score_fn, {"ref": GYM}),
        RewardComponent("correct", 0.0, correct_fn, {"ref": GYM, "column": "correct"}),
    ]


def correctness(cfg: ScoreConfig) -> Callable[..., list[float]]:
    """What says a completion is right, `(prompts, completions, answers) -> list[float]` of 1.0 / 0.0: the family's
    full marks with the `reasoning_gym` reward, else the `correct` checker."""
    return gym_rewards(cfg)[1] if uses_gym(cfg) else checker_reward("correct", cfg)


def uses_gym(cfg: ScoreConfig) -> bool:
    reward = cfg.reward
    return reward == GYM or (isinstance(reward, list) and any(c.get("ref") == GYM for c in reward))


def reward_values(
    name: str,
    fn: RewardFn,
    prompts: list[str],
    completions: list[str],
    row: Callable[[int], str],
    answers: list[str | None] | None = None,
) -> list[float]:
    """Call a reward and check what it returns: one finite number per completion, within +-MAX_REWARD. A reward
    that raises (SystemExit and KeyboardInterrupt included), or returns anything else, is a DataError naming the
    reward, the first bad row (`row(i)` describes row i) and the value; the reward's own exception is kept as the
    cause (shown with `--debug`)."""
    if takes_answers(fn) and (answers is None or all(a is None for a in answers)):
        raise ConfigError(f"reward {name!r} checks answers: set prompts.answer_column to the gold answers' column")
    try:
        values = fn(prompts, completions, answers) if takes_answers(fn) else fn(prompts, completions)
    except CONTAINED as e:
        raise DataError(f"reward {name!r} raised {_described(e)} on the batch from {row(0)}") from e
    expected = f"expected a list of {len(prompts)} numbers, one per completion"
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise DataError(f"reward {name!r} returned {shown(values)} for the batch from {row(0)}: {expected}")
    try:
        values = list(values)
    except CONTAINED as e:
        raise DataError(f"reward {name!r} returned {shown(values)} for the batch from {row(0)}: {expected}") from e
    if len(values) != len(prompts):
        raise DataError(
            f"reward {name!r} returned {len(values)} values for {len(prompts)} completions (the batch from {row(0)})"
        )
    out = []
    for i, value in enumerate(values):
        number = _as_number(value)
        if number is None or not abs(number) <= MAX_REWARD:
            raise DataError(
                f"reward {name!r} returned {shown(value)} for {row(i)}: expected a finite number within "
                f"+-{MAX_REWARD:g}"
            )
        out.append(number)
    return out


def _as_number(value: Any) -> float | None:
    """A reward's value as a float: a Python or numpy number or a one-element tensor; None for anything else
    (text, true/false, an integer too large for a float, an object whose conversion fails)."""
    if isinstance(value, (bool, str, bytes)) or type(value).__name__ in ("bool", "bool_"):  # numpy booleans too
        return None
    try:
        return float(value)
    except CONTAINED:
        return None


def combine(components: list[RewardComponent], values: dict[str, list[float]]) -> list[float]:
    """The weighted sum of the components' values, sample by sample."""
    n = len(next(iter(values.values())))
    return [math.fsum(c.weight * values[c.name][i] for c in components) for i in range(n)]


def configured_reward(cfg: ScoreConfig, device: str = "cpu", cache_dir: Path | None = None) -> RewardFn:
    """The configured reward (`score.reward`, a name or a list of weighted components) as one function of
    (prompts, completions[, answers]): the weighted sum the score stage writes as `reward`. `answers` (the gold
    answers) is needed when a component checks answers."""
    components = load_components(cfg, device, cache_dir)

    def reward(prompts: list[str], completions: list[str], answers: list[str | None] | None = None) -> list[float]:
        def row(i: int) -> str:
            return f"completion {i} ({prompts[i][:40]!r} ...)"

        values = {c.name: reward_values(c.name, c.fn, prompts, completions, row, answers) for c in components}
        return combine(components, values)

    return reward


def routed_reward(cfg: ScoreConfig, device: str = "cpu", cache_dir: Path | None = None) -> Callable[..., list[float]]:
    """`configured_reward` of each task of score.tasks, as one function of (prompts, completions, answers, tasks)
    that scores each row with its own task's reward; without score.tasks, the one reward of every row."""
    fns = {task: configured_reward(score, device, cache_dir) for task, score in cfg.by_task().items()}

    def reward(
        prompts: list[str], completions: list[str], answers: list | None = None, tasks: list | None = None
    ) -> list[float]:
        def call(fn: Callable, at: list[int]) -> list[float]:
            gold = None if answers is None else [answers[i] for i in at]
            return fn([prompts[i] for i in at], [completions[i] for i in at], gold)

        return by_task(fns, tasks if tasks is not None else [None] * len(prompts), call)

    return reward


def by_task(fns: dict, tasks: list, call: Callable[[Any, list[int]], list]) -> list:
    """`call(fn, rows)` for each task's function over that task's rows (`fns` keyed by task; {None: fn} without
    tasks), the values put back in row order."""
    out: list = [None] * len(tasks)
    unknown = [t for t in tasks if t not in fns] if None not in fns else []
    if unknown:
        raise DataError(f"a prompt's task is {shown(unknown[0])}: score.tasks lists {', '.join(map(str, fns))}")
    for task, fn in fns.items():
        at = [i for i, t in enumerate(tasks) if t == task or None in fns]
        if at:
            for i, value in zip(at, call(fn, at), strict=True):
                out[i] = value
    return out
