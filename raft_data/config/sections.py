"""The experiment config's sections: one typed dataclass per stage, each validated in `__post_init__` with an
error that names the field and the bad value. Defaults follow the RAFT paper where it says something.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raft_data.errors import ConfigError, shown


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={shown(value)} is invalid: expected {expected}")


# ---------------------------------------------------------------------------------------------------------------------
# Bounds: what can work at all, checked before anything loads (the model's own limits, its context and width, are
# checked against its config.json by raft_data.models.checks).

MAX_SEED = 2**32 - 1  # numpy's and transformers' set_seed take seeds in [0, 2**32)
MAX_TOKENS = 1 << 20  # a token budget beyond any model's context
MAX_COUNT = 1 << 16  # samples per prompt, batch sizes, LoRA rank
MAX_ROWS = 1 << 40  # rows of a selection
MAX_SHARDS = 99_999  # shard names have five digits (shard-00003-of-00016)
MAX_NAME_BYTES = 128  # experiment.name: a folder name with room for suffixes (_sweep, _random, .tmp)
MAX_REWARD_WEIGHT = 1e6  # a reward component's weight, so that a weighted sum of finite rewards stays finite
REWARD_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*|[A-Za-z_]\w*")


def finite(value: Any) -> bool:
    """A number that is not NaN or infinite; an integer too large for a float is not one either."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def _count(key: str, value: int, low: int, high: int) -> None:
    _require(low <= value <= high, key, value, f"an integer in [{low}, {high:,}]")


def _positive_finite(key: str, value: float, high: float) -> None:
    _require(finite(value) and 0 < value <= high, key, value, f"a number in (0, {high:g}]")


def _path(key: str, value: str | None) -> None:
    """A path the file system can take: no NUL character, no part longer than 255 bytes, at most 4,096 bytes."""
    if value is None:
        return
    parts = value.replace("\\", "/").split("/")
    ok = "\x00" not in value and len(value.encode("utf-8", "replace")) <= 4096
    ok = ok and all(len(p.encode("utf-8", "replace")) <= 255 for p in parts)
    _require(ok, key, value, "a path: no NUL character, no part longer than 255 bytes, at most 4,096 bytes")


def _reward_ref(key: str, value: Any) -> None:
    """A built-in reward's name or `module:function`, both spelled as Python names (never a file path)."""
    _require(
        isinstance(value, str) and REWARD_REF.fullmatch(value) is not None,
        key,
        value,
        "a built-in reward name or module:function (a dotted module path of Python names, e.g. my_rewards:score)",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Stage configs. Defaults follow the RAFT paper where it says something (temperature 1.0, top-p 1.0, best-of-K).


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_root: str = "runs"  # rounds go to <output_root>/<name>/round-NNNN/
    seed: int = 0  # the root of every other seed: prompt draws, sampling, SFT

    def __post_init__(self) -> None:
        # one path component, so that an experiment never writes outside output_root
        one_component = bool(self.name) and self.name not in (".", "..") and not any(c in self.name for c in "/\\")
        _require(one_component, "experiment.name", self.name, "a folder name (not '.' or '..', no '/' or '\\')")
        _require(
            len(self.name.encode("utf-8", "replace")) <= MAX_NAME_BYTES and self.name.isprintable(),
            "experiment.name",
            self.name,
            f"at most {MAX_NAME_BYTES} bytes of printable characters",
        )
        _path("experiment.output_root", self.output_root)
        _count("experiment.seed", self.seed, 0, MAX_SEED)


@dataclass
class ModelConfig:
    name_or_path: str = ""  # G0, the base model: a local save_pretrained folder
    trust_remote_code: bool = False  # never on unless asked for
    dtype: str = "float32"  # float32 | bfloat16 | float16

    def __post_init__(self) -> None:
        _require(bool(self.name_or_path), "model.name_or_path", self.name_or_path, "a model folder")
        _path("model.name_or_path", self.name_or_path)
        _require(
            self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", self.dtype, "float32|bfloat16|float16"
        )


@dataclass
class PromptsConfig:
    # where the prompts come from
    path: str = ""  # a .jsonl, .parquet or .csv file, or a `datasets` id (needs the network)
    split: str = "train"  # for a `datasets` id
    prompt_column: str = "prompt"
    id_column: str | None = None  # None: prompt_id is a hash of the prompt text
    # checkable answers: the gold answer, and a difficulty level, carried into prompts.parquet, samples/ and eval
    answer_column: str | None = None
    level_column: str | None = None
    levels: list[str] = field(default_factory=list)  # keep only prompts of these levels (empty: all)
    # a curriculum over `levels`, listed easy to hard: round 0 draws from the first level; each later round draws
    # from every level up to the first one whose pass@1 in the last round that sampled it is below this (None: off)
    curriculum_threshold: float | None = None
    # how many per round, and what is kept aside
    n_prompts: int = 32  # b: prompts drawn per round (seed differs per round)
    heldout_fraction: float = 0.1  # share of the source never trained on, chosen by prompt_id hash
    # a column that says each row's split, train | heldout (e.g. problems made from disjoint seeds, `raft-data
    # gym`); when set it decides the split and heldout_fraction is not used
    split_column: str | None = None
    # the levels rounds draw from (empty: every level of `levels`); held-out prompts of the other levels measure
    # whether gains transfer to problems of a kind never trained on
    train_levels: list[str] = field(default_factory=list)
    # mixed tasks: a column naming each row's task (e.g. arithmetic, gym_products, code), carried into samples/ as
    # `task`; score.tasks routes each task to its own verifier, select.task_quota caps each task's share, and
    # pass@k is reported per task (`raft-data mix` writes such a file from several experiments' prompts)
    task_column: str | None = None

    def __post_init__(self) -> None:
        _require(bool(self.path), "prompts.path", self.path, "a prompts file")
        _path("prompts.path", self.path)
        _require(self.n_prompts >= 1, "prompts.n_prompts", self.n_prompts, ">= 1")
        _require(0.0 <= self.heldout_fraction < 1.0, "prompts.heldout_fraction", self.heldout_fraction, "in [0, 1)")
        _require(
            not self.levels or self.level_column is not None,
            "prompts.levels",
            self.levels,
            "an empty list unless prompts.level_column names the levels",
        )
        _require(all(isinstance(v, str) for v in self.levels), "prompts.levels", self.levels, "a list of level names")
        _require(
            all(isinstance(v, str) for v in self.train_levels)
            and (not self.train_levels or self.level_column is not None)
            and (not self.levels or set(self.train_levels) <= set(self.levels)),
            "prompts.train_levels",
            self.train_levels,
            "level names (of prompts.levels, when that is set), with prompts.level_column naming the levels",
        )
        _require(
            self.split_column is None or (isinstance(self.split_column, str) and bool(self.split_column)),
            "prompts.split_column",
            self.split_column,
            "a column name",
        )
        _require(
            self.task_column is None or (isinstance(self.task_column, str) and bool(self.task_column)),
            "prompts.task_column",
            self.task_column,
            "a column name",
        )
        _require(
            self.curriculum_threshold is None or (bool(self.levels) and 0 < self.curriculum_threshold <= 1),
            "prompts.curriculum_threshold",
            self.curriculum_threshold,
            "in (0, 1], with prompts.levels listing the levels easy to hard",
        )


def prompts_hashed(cfg: PromptsConfig) -> dict[str, Any]:
    """What of the prompts section a stage's config hash covers: the fields added later (split_column,
    train_levels, task_column) only when set, so rounds made before they existed stay valid."""
    later = {"split_column": None, "train_levels": [], "task_column": None}
    return {k: v for k, v in cfg.__dict__.items() if k not in later or v != later[k]}


@dataclass
class GenerateConfig:
    backend: str = "transformers"
    # sampling
    n_samples: int = 4  # K: samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k (transformers would otherwise apply 50)
    max_new_tokens: int = 48
    # stop strings, e.g. [". ", "!", "?", "\n"]: a sample ends with the first one it generates (kept in the text);
    # empty: samples end only at end-of-sequence or max_new_tokens
    stop: list[str] = field(default_factory=list)
    # execution
    # prompts per forward batch (each expanded K ways); auto: 16 on CPU, on CUDA as many as half the GPU's memory
    # holds for their KV cache (backends/transformers.py, prompt_batch_size)
    batch_size: int | str = "auto"
    n_shards: int = 4  # part of the config hash: cannot change on a relaunch
    device: str = "auto"  # auto | cpu | cuda
    shared_prefill: bool = False  # transformers: encode each prompt once and expand its KV cache K ways
    # adaptive sampling (checkable answers): after the first pass of n_samples per prompt, further passes of
    # n_samples each only for prompts with fewer than adaptive_target correct samples, up to adaptive_budget
    # samples per prompt in all; 0 turns it off (uniform K)
    adaptive_target: int = 0
    adaptive_budget: int = 32
    # chat and length
    chat_template: bool = False  # render prompts (text, or a column of chat messages) with the tokenizer's template
    max_prompt_tokens: int | None = None  # None: the model's context minus max_new_tokens
    long_prompts: str = "skip"  # what to do with longer prompts: skip | truncate_left
    # candidates from files, ranked with the policy's samples: [{name, path, completion_column, match, ...}]
    extra_sources: list = field(default_factory=list)
    # vllm backend: keyword arguments of vllm.LLM, passed through as they are (tensor_parallel_size, dtype,
    # max_model_len, gpu_memory_utilization, enforce_eager, ...); dtype defaults to model.dtype
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # openai backend: any OpenAI-compatible server (vLLM, llama.cpp, TGI, a hosted API)
    api_base: str = "http://127.0.0.1:8000/v1"
    api_endpoint: str = "completions"  # completions | chat (the server applies the chat template)
    api_model: str = ""  # the served model name; "" sends the round's model path (what `vllm serve PATH` serves)
    api_key_env: str = ""  # name of the environment variable that holds the API key; "" sends no key
    api_concurrency: int = 8  # requests in flight at once
    api_timeout_s: float = 120.0  # per request
    api_max_retries: int = 5  # on 429, 5xx, timeouts and refused connections
    api_backoff_s: float = 1.0  # first wait before a retry; doubles each time (a Retry-After header wins)

    def __post_init__(self) -> None:
        _count("generate.n_samples", self.n_samples, 1, MAX_COUNT)
        _require(self.temperature >= 0 and finite(self.temperature), "generate.temperature", self.temperature, ">= 0")
        _require(0 < self.top_p <= 1, "generate.top_p", self.top_p, "in (0, 1]")
        _count("generate.top_k", self.top_k, 0, 2**31 - 1)
        _count("generate.max_new_tokens", self.max_new_tokens, 1, MAX_TOKENS)
        _require(
            isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
            "generate.stop",
            self.stop,
            'a list of non-empty strings, e.g. [". ", "\\n"]',
        )
        _require(
            self.batch_size == "auto" or (isinstance(self.batch_size, int) and 1 <= self.batch_size <= MAX_COUNT),
            "generate.batch_size",
            self.batch_size,
            f"an integer in [1, {MAX_COUNT:,}] or auto",
        )
        _count("generate.n_shards", self.n_shards, 1, MAX_SHARDS)
        _require(self.device in ("auto", "cpu", "cuda"), "generate.device", self.device, "auto|cpu|cuda")
        _require(
            self.max_prompt_tokens is None or 1 <= self.max_prompt_tokens <= MAX_TOKENS,
            "generate.max_prompt_tokens",
            self.max_prompt_tokens,
            f"an integer in [1, {MAX_TOKENS:,}] or null",
        )
        _require(
            self.long_prompts in ("skip", "truncate_left"),
            "generate.long_prompts",
            self.long_prompts,
            "skip|truncate_left",
        )
        _count("generate.adaptive_target", self.adaptive_target, 0, MAX_COUNT)
        _require(
            self.adaptive_target == 0 or self.n_samples <= self.adaptive_budget <= MAX_COUNT,
            "generate.adaptive_budget",
            self.adaptive_budget,
            f"in [generate.n_samples ({self.n_samples}), {MAX_COUNT:,}]",
        )
        passes = 1 if self.adaptive_target == 0 else self.adaptive_budget // self.n_samples
        _require(
            self.n_shards * passes <= MAX_SHARDS,
            "generate.n_shards",
            self.n_shards,
            f"at most {MAX_SHARDS:,} shards in all: n_shards x {passes} passes of adaptive sampling",
        )
        _require(
            self.adaptive_target == 0 or not self.extra_sources,
            "generate.adaptive_target",
            self.adaptive_target,
            "0 with generate.extra_sources (candidates from files are not sampled in passes)",
        )
        self.extra_sources = [_extra_source(i, entry) for i, entry in enumerate(self.extra_sources)]
        names = [source["name"] for source in self.extra_sources]
        for name in names:
            _require(names.count(name) == 1, "generate.extra_sources[].name", name, "a name used once")
        endpoints = ("completions", "chat")
        _require(self.api_endpoint in endpoints, "generate.api_endpoint", self.api_endpoint, "completions|chat")
        _require(
            self.api_base.startswith(("http://", "https://")), "generate.api_base", self.api_base, "an http(s) URL"
        )
        _count("generate.api_concurrency", self.api_concurrency, 1, 1024)
        _positive_finite("generate.api_timeout_s", self.api_timeout_s, 86400.0)
        _count("generate.api_max_retries", self.api_max_retries, 0, 100)
        _require(
            finite(self.api_backoff_s) and 0 <= self.api_backoff_s <= 3600,
            "generate.api_backoff_s",
            self.api_backoff_s,
            "a number in [0, 3600]",
        )
        _require(
            "model" not in self.engine_kwargs,
            "generate.engine_kwargs",
            self.engine_kwargs,
            "no 'model' key (the model is model.name_or_path, or the previous round's model)",
        )


EXTRA_SOURCE_DEFAULTS: dict[str, Any] = {
    "name": None,  # the `source` column of its rows; "policy" is the model's own samples
    "path": None,  # a .jsonl or .parquet file
    "completion_column": "completion",
    "match": "prompt_id",  # prompt_id: by id; prompt: by exact prompt text
    "key_column": None,  # the column matched on; defaults to "prompt_id" or "prompt" after `match`
    "strip_prompt": False,  # the completion repeats the prompt first (e.g. a full reference text): drop it
    "max_per_prompt": None,  # keep at most this many per prompt, in file order
}


def _extra_source(index: int, entry: Any) -> dict[str, Any]:
    """One `generate.extra_sources` entry, checked and completed with defaults (so the config hash is stable)."""
    key = f"generate.extra_sources[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{key}={entry!r} is invalid: expected a mapping with name, path, completion_column, match")
    unknown = sorted(set(entry) - set(EXTRA_SOURCE_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}: it takes {', '.join(EXTRA_SOURCE_DEFAULTS)}")
    out = {**EXTRA_SOURCE_DEFAULTS, **entry}
    name, path = out["name"], out["path"]
    _require(
        isinstance(name, str) and bool(name) and name != "policy", f"{key}.name", name, "a name other than 'policy'"
    )
    _require(
        isinstance(path, str) and Path(path).suffix in (".jsonl", ".json", ".parquet"),
        f"{key}.path",
        path,
        "a .jsonl or .parquet file",
    )
    _path(f"{key}.path", path)
    _require(out["match"] in ("prompt_id", "prompt"), f"{key}.match", out["match"], "prompt_id|prompt")
    _require(
        isinstance(out["completion_column"], str) and bool(out["completion_column"]),
        f"{key}.completion_column",
        out["completion_column"],
        "a column name",
    )
    if out["key_column"] is None:
        out["key_column"] = out["match"]
    _require(
        isinstance(out["key_column"], str) and bool(out["key_column"]),
        f"{key}.key_column",
        out["key_column"],
        "a column name",
    )
    _require(isinstance(out["strip_prompt"], bool), f"{key}.strip_prompt", out["strip_prompt"], "true or false")
    m = out["max_per_prompt"]
    _require(
        m is None or (isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= MAX_COUNT),
        f"{key}.max_per_prompt",
        m,
        f"an integer in [1, {MAX_COUNT:,}] or null",
    )
    return out


# The judge's built-in prompt templates (their text and parsers live in raft_data/rewards/judge.py).
JUDGE_TEMPLATES = ("score_1_10", "yes_no")


@dataclass
class JudgeConfig:
    """An LLM judge behind any OpenAI-compatible endpoint: a reward component `{judge: {...}, weight: ...}`."""

    api_base: str = ""  # e.g. http://127.0.0.1:8000/v1
    model: str = ""  # the served model name the requests ask for
    endpoint: str = "chat"  # chat (the server applies the chat template) | completions
    # a built-in template (score_1_10, yes_no) or the prompt text itself, with {prompt} and {completion} in it
    template: str = "score_1_10"
    # the verdict: a regex searched in the answer (case-insensitive), its first group a number or yes/no (1/0);
    # None: the template's own (score_1_10: the first number 1..10; yes_no: the first yes or no; text: a number)
    parse: str | None = None
    # sampling, part of the cache key
    max_tokens: int = 16
    temperature: float = 0.0
    seed: int = 0
    # requests
    api_key_env: str = ""  # name of the environment variable that holds the API key; "" sends no key
    concurrency: int = 8  # requests in flight at once
    timeout_s: float = 120.0  # per request
    max_retries: int = 5  # on 429, 5xx, timeouts and refused connections
    backoff_s: float = 1.0  # first wait before a retry; doubles each time
    cache: bool = True  # answers kept in <experiment>/judge-cache.sqlite, so a rerun asks nothing again

    def __post_init__(self) -> None:
        _require(
            isinstance(self.api_base, str) and self.api_base.startswith(("http://", "https://")),
            "judge.api_base",
            self.api_base,
            "an http(s) URL such as http://127.0.0.1:8000/v1",
        )
        _require(isinstance(self.model, str) and bool(self.model), "judge.model", self.model, "the served model name")
        _require(self.endpoint in ("chat", "completions"), "judge.endpoint", self.endpoint, "chat|completions")
        _require(
            isinstance(self.template, str)
            and (self.template in JUDGE_TEMPLATES or "{prompt}" in self.template and "{completion}" in self.template),
            "judge.template",
            self.template,
            f"one of {', '.join(JUDGE_TEMPLATES)} or a text with {{prompt}} and {{completion}} in it",
        )
        if self.parse is not None:
            try:
                groups = re.compile(self.parse).groups
            except (re.error, TypeError) as e:
                raise ConfigError(f"judge.parse={shown(self.parse)} is invalid: {e}") from None
            _require(groups >= 1, "judge.parse", self.parse, "a regex with a group around the verdict")
        _count("judge.max_tokens", self.max_tokens, 1, MAX_TOKENS)
        _require(
            finite(self.temperature) and 0 <= self.temperature <= 10, "judge.temperature", self.temperature, ">= 0"
        )
        _count("judge.seed", self.seed, 0, MAX_SEED)
        _count("judge.concurrency", self.concurrency, 1, 1024)
        _positive_finite("judge.timeout_s", self.timeout_s, 86400.0)
        _count("judge.max_retries", self.max_retries, 0, 100)
        _require(
            finite(self.backoff_s) and 0 <= self.backoff_s <= 3600, "judge.backoff_s", self.backoff_s, "in [0, 3600]"
        )
        _require(isinstance(self.cache, bool), "judge.cache", self.cache, "true|false")


def judge_config(key: str, value: Any) -> JudgeConfig:
    """A reward component's `judge:` mapping as a JudgeConfig; errors name the component (`key`)."""
    _require(isinstance(value, dict), key, value, "a mapping such as {api_base: ..., model: ..., template: yes_no}")
    known = [f.name for f in dataclasses.fields(JudgeConfig)]
    unknown = sorted(str(k) for k in set(value) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}: a judge takes {', '.join(known)}")
    try:
        return JudgeConfig(**value)
    except ConfigError as e:
        raise ConfigError(f"{key.rpartition('.')[0]}.{e}") from None


# Keys a reward component (an item of a `score.reward` list) may hold. `ref` names a built-in or module:function;
# `model` a Hugging Face sequence-classification folder; `judge` an LLM judge. Exactly one of the three.
REWARD_COMPONENT_KEYS = {
    "name": "its column in scores/ (default: the ref's name, the model folder's name, or judge)",
    "ref": "a built-in reward name or module:function",
    "model": "a sequence-classification model folder (a reward model)",
    "judge": "an LLM judge behind an OpenAI-compatible endpoint: {api_base, model, template, parse, ...}",
    "weight": "its weight in the summed reward (default 1.0)",
    "label": "classifiers: the label to read, by index or name (default: none, the model must have one logit)",
    "output": "classifiers: probability | logit (default probability)",
    "chat_template": "true: give the model the conversation in its own chat template (default false)",
    "text": "what the model reads: prompt_completion | completion (default: score.text)",
    "batch_size": "sequences per forward pass (default: score.batch_size)",
    "max_length": "tokens the model reads, longer texts are cut (default 512)",
}
# Columns of scores/ that a component may not take as its name.
RESERVED_SCORE_COLUMNS = ("prompt_id", "sample_idx", "reward", "reward_raw", "logp", "ref_logp", "extracted")


# what a task of score.tasks may set: its verifier, not how scoring runs
TASK_SCORE_KEYS = (
    "reward",
    "text",
    "extract",
    "extract_regex",
    "match",
    "tolerance",
    "code_timeout",
    "code_memory_mb",
    "code_workers",
)


@dataclass
class ScoreConfig:
    # the reward: a built-in name (see raft_data.rewards.builtin.BUILTIN), "module:function", or a list of components
    # {name, ref | model, weight, ...} whose weighted sum is the reward, each kept as its own column
    reward: str | list[dict[str, Any]] = "vader"
    text: str = "prompt_completion"  # what the reward reads: prompt_completion | completion
    # the paper's KL-regularised rank key: with beta > 0, reward = r - beta * (logp - ref_logp), the raw r kept in
    # reward_raw; logp is log p_t(y|x) under the round's generator, ref_logp log p_0(y|x) under the base model
    beta: float = 0.0
    ref_model: str | None = None  # p_0; None: model.name_or_path
    # checkable answers (the `correct` and `format` rewards, with prompts.answer_column): where the answer stands in
    # a completion, and how it is compared with the gold answer; the extracted text is kept as `extracted`
    extract: str = "last_number"  # last_number | boxed | answer_line | answer_tag | regex
    extract_regex: str | None = None  # extract: regex: the last match's first group (or the whole match)
    match: str = "numeric"  # exact (after normalising) | numeric (within tolerance; 1/2 = 0.5) | math_verify
    tolerance: float = 1e-6  # numeric: |a - b| <= tolerance * max(1, |gold|)
    # running code (the code_pass and code_pass_fraction rewards, raft_data/rewards/sandbox.py): wall-clock seconds
    # (and as many CPU seconds) per program with its tests, its address space in MB, programs run at once (0: min(2,
    # CPUs))
    code_timeout: float = 5.0
    code_memory_mb: int = 1024
    code_workers: int = 0
    # mixed tasks (prompts.task_column): each task's own verifier, as overrides of the fields above (TASK_SCORE_KEYS),
    # e.g. {arithmetic: {reward: correct}, code: {reward: [{ref: code_pass, name: correct}]}}; every task in the
    # data must be listed. Empty: one reward for every row
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # execution, for reward models and log-probabilities
    batch_size: int = 16
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        _require(bool(self.reward), "score.reward", self.reward, "a reward name, module:function or a list")
        if isinstance(self.reward, str):
            _reward_ref("score.reward", self.reward)
        _path("score.ref_model", self.ref_model)
        extracts = ("last_number", "boxed", "answer_line", "answer_tag", "regex")
        _require(self.extract in extracts, "score.extract", self.extract, "|".join(extracts))
        _require(
            (self.extract == "regex") == (self.extract_regex is not None),
            "score.extract_regex",
            self.extract_regex,
            "a pattern exactly when score.extract is regex",
        )
        if self.extract_regex is not None:
            try:
                re.compile(self.extract_regex)
            except re.error as e:
                raise ConfigError(f"score.extract_regex={self.extract_regex!r} is invalid: {e}") from None
        matches = ("exact", "numeric", "math_verify")
        _require(self.match in matches, "score.match", self.match, "|".join(matches))
        _require(self.tolerance >= 0 and finite(self.tolerance), "score.tolerance", self.tolerance, ">= 0")
        _positive_finite("score.code_timeout", self.code_timeout, 3600)
        _count("score.code_memory_mb", self.code_memory_mb, 64, 1 << 20)
        _count("score.code_workers", self.code_workers, 0, 256)
        _require(
            self.text in ("prompt_completion", "completion"), "score.text", self.text, "prompt_completion|completion"
        )
        _require(self.beta >= 0 and finite(self.beta), "score.beta", self.beta, ">= 0")
        _count("score.batch_size", self.batch_size, 1, MAX_COUNT)
        _require(self.device in ("auto", "cpu", "cuda"), "score.device", self.device, "auto|cpu|cuda")
        if isinstance(self.reward, list):
            names = [_check_reward_component(i, c) for i, c in enumerate(self.reward)]
            dup = sorted({n for n in names if names.count(n) > 1})
            _require(not dup, "score.reward", dup, "distinct component names (set `name:`)")
        for name in self.tasks:
            self.for_task(name)  # each task's verifier is checked as a score section of its own

    def for_task(self, task: str) -> ScoreConfig:
        """The score settings of one task of score.tasks: this section with the task's overrides."""
        key = f"score.tasks.{task}"
        _require(isinstance(task, str) and bool(task.strip()), "score.tasks", task, "task names (text)")
        over = self.tasks[task]
        _require(isinstance(over, dict), key, over, "a mapping of score settings, e.g. {reward: correct}")
        unknown = sorted(set(over) - set(TASK_SCORE_KEYS), key=str)
        if unknown:
            raise ConfigError(f"unknown key {key}.{str(unknown[0])[:100]}: a task takes {', '.join(TASK_SCORE_KEYS)}")
        try:
            return dataclasses.replace(self, tasks={}, **over)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None

    def by_task(self) -> dict[str | None, ScoreConfig]:
        """Each task's score settings ({task: for_task(task)}), or {None: this section} without score.tasks."""
        return {task: self.for_task(task) for task in self.tasks} or {None: self}


def reward_component_name(component: dict[str, Any]) -> str:
    """A component's column name: its `name`, else the function or model folder it points at."""
    if component.get("name"):
        return str(component["name"])
    if component.get("ref"):
        return str(component["ref"]).rpartition(":")[2]
    if component.get("judge"):
        return "judge"
    return Path(str(component["model"])).name.replace("-", "_").replace(".", "_")


def _check_reward_component(i: int, c: Any) -> str:
    key = f"score.reward[{i}]"
    _require(isinstance(c, dict), key, c, "a mapping such as {ref: vader, weight: 1.0}")
    unknown = sorted(set(c) - set(REWARD_COMPONENT_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key {key}.{unknown[0]}: a reward component takes {', '.join(REWARD_COMPONENT_KEYS)}"
        )
    _require(
        [bool(c.get("ref")), bool(c.get("model")), bool(c.get("judge"))].count(True) == 1,
        key,
        c,
        "exactly one of ref, model or judge",
    )
    if c.get("ref"):
        _reward_ref(f"{key}.ref", c["ref"])
    elif c.get("judge"):
        judge_config(f"{key}.judge", c["judge"])
    else:
        _require(isinstance(c["model"], str), f"{key}.model", c["model"], "a model folder")
        _path(f"{key}.model", c["model"])
    weight = c.get("weight", 1.0)
    _require(
        finite(weight) and abs(weight) <= MAX_REWARD_WEIGHT,
        f"{key}.weight",
        weight,
        f"a number in [-{MAX_REWARD_WEIGHT:g}, {MAX_REWARD_WEIGHT:g}]",
    )
    _require(
        c.get("output", "probability") in ("probability", "logit"),
        f"{key}.output",
        c.get("output"),
        "probability|logit",
    )
    _require(
        c.get("text", "prompt_completion") in ("prompt_completion", "completion"),
        f"{key}.text",
        c.get("text"),
        "prompt_completion|completion",
    )
    label = c.get("label")
    _require(
        label is None or isinstance(label, (int, str)) and not isinstance(label, bool),
        f"{key}.label",
        label,
        "a label index or name",
    )
    _require(
        isinstance(c.get("chat_template", False), bool), f"{key}.chat_template", c.get("chat_template"), "true|false"
    )
    for size in ("batch_size", "max_length"):
        v = c.get(size, 1)
        _require(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_TOKENS,
            f"{key}.{size}",
            v,
            f"an integer in [1, {MAX_TOKENS:,}]",
        )
    name = reward_component_name(c)
    _require(
        name.isidentifier() and name not in RESERVED_SCORE_COLUMNS,
        f"{key}.name",
        name,
        f"an identifier other than {', '.join(RESERVED_SCORE_COLUMNS)}",
    )
    return name


# How DuckDB runs a selection, not what it selects (SelectConfig.selection_fields leaves them out).
SELECT_ENGINE_FIELDS = ("memory_limit", "temp_directory")
# A DuckDB memory size: a number and a unit, or a share of the machine's memory.
MEMORY_SIZE = r"(?i)\d+(\.\d+)?\s*(b|bytes|kb|mb|gb|tb|kib|mib|gib|tib|%)"


@dataclass
class SelectConfig:
    strategy: str = "best_per_prompt"  # a .sql file in raft_data/selection/sql/, or "custom" with sql_file
    rank_by: str = "reward"  # a numeric column of scores/ that strategies rank by
    # strategy parameters, bound as DuckDB parameters ($n, $alpha, $tau)
    n: int = 1  # top_n_per_prompt: samples kept per prompt
    alpha: float | None = None  # global_top: fraction of all samples kept; None = 1/K, as many as best-of-K keeps
    tau: float = 0.0  # threshold: keep samples with rank_by >= tau
    # guards, applied before ranking in this order; each is off by default and counted in the manifest
    drop_truncated: bool = False  # samples that hit max_new_tokens
    drop_empty: bool = False  # completions that are empty or only whitespace
    drop_duplicates: bool = False  # repeated completions of one prompt (the lowest sample_idx stays)
    drop_constant: bool = False  # prompts whose remaining samples all score the same
    min_margin: float = 0.0  # > 0: drop prompts whose best and second-best scores differ by less
    # checkable answers: drop prompts whose pass rate (share of samples with correct = 1) is outside the band;
    # min_pass_rate > 0 drops prompts no sample solved, max_pass_rate < 1 those every sample solved
    min_pass_rate: float = 0.0
    max_pass_rate: float = 1.0
    # the user's own SQL over the views samples, scores and candidates
    where: str | None = None  # a where clause on candidates before ranking, e.g. "n_tokens >= 8"
    qualify: str | None = None  # a qualify clause on candidates before ranking (window functions)
    sql_file: str | None = None  # a whole selection query; needs strategy: custom
    # output
    format: str = "prompt_completion"  # prompt_completion | messages (conversational) | pairs (DPO preferences)
    pair_margin: float = 0.0  # pairs: chosen minus rejected rank_key must exceed this
    # execution: the most memory DuckDB may hold (e.g. "4GB"; None: its default, 80% of the machine's) and where it
    # spills beyond that (None: `.tmp` in the working directory). They cannot change what is selected, so they are
    # in no config hash and not on the dataset card (`selection_fields`)
    memory_limit: str | None = None
    temp_directory: str | None = None
    # quotas, after the strategy: at most this many selected rows of each task (prompts.task_column) and of each
    # level (a difficulty band, prompts.level_column), taking each prompt's best first, e.g. {arithmetic: 32}; a
    # task or level not listed has no cap
    task_quota: dict[str, int] = field(default_factory=dict)
    level_quota: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.strategy), "select.strategy", self.strategy, "a strategy name")
        for key in ("task_quota", "level_quota"):
            for name, cap in getattr(self, key).items():
                ok = isinstance(cap, int) and not isinstance(cap, bool) and 0 <= cap <= MAX_ROWS
                _require(ok, f"select.{key}.{name}", cap, f"a count of rows in [0, {MAX_ROWS:,}]")
        _require(self.rank_by.isidentifier(), "select.rank_by", self.rank_by, "a column name of scores/, e.g. reward")
        _count("select.n", self.n, 1, MAX_COUNT)
        _require(self.alpha is None or 0 < self.alpha <= 1, "select.alpha", self.alpha, "in (0, 1], or null for 1/K")
        _require(finite(self.tau), "select.tau", self.tau, "a finite number")
        _require(finite(self.min_margin) and self.min_margin >= 0, "select.min_margin", self.min_margin, ">= 0")
        _require(0 <= self.min_pass_rate <= 1, "select.min_pass_rate", self.min_pass_rate, "in [0, 1]")
        _require(
            self.min_pass_rate <= self.max_pass_rate <= 1,
            "select.max_pass_rate",
            self.max_pass_rate,
            "in [select.min_pass_rate, 1]",
        )
        for key in ("where", "qualify", "sql_file"):
            value = getattr(self, key)
            _require(value is None or bool(value.strip()), f"select.{key}", value, "non-empty text, or null")
        _path("select.sql_file", self.sql_file)
        _require(
            (self.strategy == "custom") == (self.sql_file is not None),
            "select.strategy",
            self.strategy,
            "custom together with select.sql_file (and sql_file only with strategy custom)",
        )
        _require(finite(self.pair_margin) and self.pair_margin >= 0, "select.pair_margin", self.pair_margin, ">= 0")
        formats = ("prompt_completion", "messages", "pairs")
        _require(self.format in formats, "select.format", self.format, "|".join(formats))
        _require(
            self.memory_limit is None or re.fullmatch(MEMORY_SIZE, self.memory_limit.strip()) is not None,
            "select.memory_limit",
            self.memory_limit,
            'a size such as "4GB", "512MiB" or "50%", or null',
        )
        _require(self.temp_directory != "", "select.temp_directory", self.temp_directory, "a folder, or null")

    def selection_fields(self) -> dict[str, Any]:
        """The fields that decide what is selected: all but the engine's memory settings. The stage's config hash
        and the dataset card hold these, so a selection redone with another memory limit keeps its hash and card."""
        later = {"task_quota": {}, "level_quota": {}}  # only when set: selections made before them keep their hash
        return {
            k: v
            for k, v in self.__dict__.items()
            if k not in SELECT_ENGINE_FIELDS and (k not in later or v != later[k])
        }

    @property
    def pass_band(self) -> bool:
        """The pass-rate guard is on."""
        return self.min_pass_rate > 0 or self.max_pass_rate < 1


@dataclass
class DecontamConfig:
    # Two more guards of the select stage, after those of `select:`; each off by default, and in the select stage's
    # config hash only when on (a selection made before they existed keeps its hash). docs/selection.md.
    # contaminated: a row whose prompt + completion shares an n-gram of words (after lower-casing and turning every
    # run of characters that are not letters or digits into one space) with an evaluation text
    drop_contaminated: bool = False
    n: int = 8  # words per n-gram
    heldout: bool = True  # the experiment's own held-out prompts (and their eval.reference_column text) are eval text
    eval_files: list[str] = field(default_factory=list)  # more evaluation text: .jsonl, .parquet, .csv or .txt files
    eval_column: str = "prompt"  # the text column of the .jsonl/.parquet/.csv eval_files (a .txt file: every line)
    # near_duplicate: a completion whose word shingles overlap those of a better-ranked completion of the same prompt
    # (in the pool: this round, or every round for cumulative) by a Jaccard similarity of at least the threshold
    drop_near_duplicates: bool = False
    near_duplicate_threshold: float = 0.8
    shingle: int = 5  # words per shingle (a completion of fewer words is one shingle)

    def __post_init__(self) -> None:
        _count("decontam.n", self.n, 1, 64)
        _count("decontam.shingle", self.shingle, 1, 64)
        _require(
            finite(self.near_duplicate_threshold) and 0 < self.near_duplicate_threshold <= 1,
            "decontam.near_duplicate_threshold",
            self.near_duplicate_threshold,
            "in (0, 1]",
        )
        for i, path in enumerate(self.eval_files):
            _require(isinstance(path, str) and bool(path.strip()), f"decontam.eval_files[{i}]", path, "a file path")
            _path(f"decontam.eval_files[{i}]", path)
        _require(bool(self.eval_column.strip()), "decontam.eval_column", self.eval_column, "a column name")

    @property
    def enabled(self) -> bool:
        """A decontamination guard is on."""
        return self.drop_contaminated or self.drop_near_duplicates


@dataclass
class EvalConfig:
    # what is evaluated: a fixed subset of the held-out prompts, the same in every round
    n_prompts: int = 32  # held-out prompts per evaluation
    n_samples: int = 2  # sampled completions per prompt (greedy adds one more)
    max_new_tokens: int | None = None  # None: generate.max_new_tokens
    # perplexity of held-out reference text: a column of the prompts source (e.g. the whole review); None skips it
    reference_column: str | None = None
    # or human text from another file (.jsonl, .parquet, .csv), its column reference_column, the i-th text beside
    # the i-th eval prompt: a language-model damage check for tasks whose prompts carry no such text (arithmetic,
    # reasoning-gym), e.g. assets/movie_reviews.parquet with reference_column: text
    reference_file: str | None = None
    # an independent reward, reported beside score.reward to catch over-optimisation of the first
    second_reward: str | None = None
    batch_size: int = 16  # sequences per forward pass for log-probabilities and perplexity
    n_shards: int = 1  # shards of the held-out prompts, each its own process under executor.kind ray or slurm

    def __post_init__(self) -> None:
        _require(self.n_prompts >= 1, "eval.n_prompts", self.n_prompts, ">= 1")
        _count("eval.n_shards", self.n_shards, 1, MAX_SHARDS)
        _count("eval.n_samples", self.n_samples, 1, MAX_COUNT)
        _require(
            self.max_new_tokens is None or 1 <= self.max_new_tokens <= MAX_TOKENS,
            "eval.max_new_tokens",
            self.max_new_tokens,
            f"an integer in [1, {MAX_TOKENS:,}] or null",
        )
        _require(self.reference_column != "", "eval.reference_column", self.reference_column, "a column or null")
        _path("eval.reference_file", self.reference_file)
        _require(
            self.reference_file is None or self.reference_column is not None,
            "eval.reference_file",
            self.reference_file,
            "null unless eval.reference_column names its text column",
        )
        if self.second_reward is not None:
            _reward_ref("eval.second_reward", self.second_reward)
        _count("eval.batch_size", self.batch_size, 1, MAX_COUNT)


@dataclass
class RoundsConfig:
    # where each round's samples come from, and where each round's SFT starts
    mode: str = "online"  # online: sample from the newest model | offline: every round samples the base model
    sft_from: str = "previous"  # previous: fine-tune the previous round's model | base: the base model (ReST-EM)
    # early stop: when held-out reward rises by less than epsilon for `patience` rounds in a row (0: never stop)
    epsilon: float = 0.0
    patience: int = 0
    # replay: human reference text (the eval.reference_column of training-split prompts) added to each round's SFT
    # data, replay_fraction x the selected rows
    replay_fraction: float = 0.0
    # drift guard, read from each round's eval (None: off): stop when a bound is crossed, or with on_drift: rollback
    # skip the drifted round, so the next round starts from the last model within bounds
    max_kl_per_token: float | None = None
    max_ppl_ratio: float | None = None
    on_drift: str = "stop"  # stop | rollback

    def __post_init__(self) -> None:
        _require(self.mode in ("online", "offline"), "rounds.mode", self.mode, "online|offline")
        _require(self.sft_from in ("previous", "base"), "rounds.sft_from", self.sft_from, "previous|base")
        _require(finite(self.epsilon), "rounds.epsilon", self.epsilon, "a finite number")
        _require(self.patience >= 0, "rounds.patience", self.patience, ">= 0")
        _require(
            finite(self.replay_fraction) and self.replay_fraction >= 0,
            "rounds.replay_fraction",
            self.replay_fraction,
            ">= 0",
        )
        for key in ("max_kl_per_token", "max_ppl_ratio"):  # a bound <= 0 could never be met
            value = getattr(self, key)
            _require(value is None or (finite(value) and value > 0), f"rounds.{key}", value, "a number > 0, or null")
        _require(self.on_drift in ("stop", "rollback"), "rounds.on_drift", self.on_drift, "stop|rollback")


@dataclass
class LoraConfig:
    # LoRA through TRL's peft_config; r = 0 fine-tunes every parameter, as the paper does
    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    merge: bool = True  # save the merged model (a plain folder the next round samples from); false: the adapter

    def __post_init__(self) -> None:
        _count("lora.r", self.r, 0, MAX_COUNT)  # and at most the model's width (models.checks)
        _count("lora.alpha", self.alpha, 1, MAX_COUNT)
        _require(0 <= self.dropout < 1, "lora.dropout", self.dropout, "in [0, 1)")
        _require(bool(self.target_modules), "lora.target_modules", self.target_modules, "all-linear or module names")


EXECUTORS = ("local", "ray", "ray_data", "slurm")


@dataclass
class ExecutorConfig:
    # where the shards of generate, score and eval run; never part of a config hash, so a round begun on one
    # executor may finish on another
    # local: shards one after another here | ray: one Ray task each | slurm: a submitit array | ray_data: the rows
    # of all unfinished shards through one Ray Data pipeline, a model loaded once per replica (generate, and score
    # with a reward model; the other sharded stages run as under ray)
    kind: str = "local"
    max_failed_fraction: float = 0.01  # rows whose backend or reward call failed, beyond which a shard stops
    # ray and ray_data
    ray_address: str | None = None  # None: a local Ray cluster; "auto" or "ray://host:10001" for a running one
    # ray_data: model replicas (vLLM engines or transformers actors, each holding its model), rows per batch sent to
    # a replica, and CPUs each replica reserves (GPUs: one per replica when the stage's device is cuda)
    ray_data_replicas: int = 1
    ray_data_batch_size: int = 16
    ray_data_cpus_per_replica: float = 1.0
    # slurm (submitit): one array task per unfinished shard
    slurm_partition: str | None = None
    slurm_time_min: int = 240
    slurm_gpus_per_task: int = 0
    slurm_cpus_per_task: int = 4
    slurm_mem_gb: int = 32
    slurm_parallelism: int = 64  # array tasks running at once
    slurm_logs: str = "slurm_logs"  # submitit's folder (job scripts, pickled tasks, logs), under the experiment
    slurm_additional: dict[str, Any] = field(default_factory=dict)  # passed as slurm_additional_parameters
    submitit_cluster: str | None = None  # None: Slurm when present; "local" runs the same tasks as local processes

    def __post_init__(self) -> None:
        _require(self.kind in EXECUTORS, "executor.kind", self.kind, "|".join(EXECUTORS))
        _require(self.ray_data_replicas >= 1, "executor.ray_data_replicas", self.ray_data_replicas, ">= 1")
        _require(self.ray_data_batch_size >= 1, "executor.ray_data_batch_size", self.ray_data_batch_size, ">= 1")
        _require(
            self.ray_data_cpus_per_replica > 0,
            "executor.ray_data_cpus_per_replica",
            self.ray_data_cpus_per_replica,
            "> 0",
        )
        _require(
            math.isfinite(self.max_failed_fraction) and 0 <= self.max_failed_fraction <= 1,
            "executor.max_failed_fraction",
            self.max_failed_fraction,
            "in [0, 1]",
        )
        for key in ("slurm_time_min", "slurm_cpus_per_task", "slurm_mem_gb", "slurm_parallelism"):
            _require(getattr(self, key) >= 1, f"executor.{key}", getattr(self, key), ">= 1")
        _require(self.slurm_gpus_per_task >= 0, "executor.slurm_gpus_per_task", self.slurm_gpus_per_task, ">= 0")
        clusters = (None, "slurm", "local", "debug")
        _require(
            self.submitit_cluster in clusters,
            "executor.submitit_cluster",
            self.submitit_cluster,
            "slurm|local|debug|null",
        )


TRACKERS = ("trackio", "tensorboard", "wandb", "mlflow")


@dataclass
class TrackingConfig:
    # experiment trackers that receive each finished round (eval metrics, selection statistics, stage costs, a
    # table of kept and rejected samples) and the SFT loss curves; never part of a config hash: logging changes no
    # artifact. Every tracker writes locally (wandb offline unless WANDB_MODE says otherwise, mlflow to a file store)
    # trackio | tensorboard | wandb | mlflow; empty: none. A string is read as a comma-separated list ("none": none)
    report_to: list[str] | str = field(default_factory=list)
    dir: str | None = None  # where trackers write; None: <output_root>/<experiment>/tracking/
    project: str | None = None  # trackio project, wandb project, mlflow experiment; None: experiment.name
    run_name: str | None = None  # the run every round logs into; None: experiment.name
    table_prompts: int = 4  # prompts per round in the kept/rejected table (all their samples)
    table_max_rows: int = 64  # rows of that table at most
    sft: bool = True  # the SFT stage reports its loss curves to the same trackers

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):
            self.report_to = [p.strip() for p in self.report_to.split(",") if p.strip() and p.strip() != "none"]
        for name in self.report_to:
            _require(name in TRACKERS, "tracking.report_to", self.report_to, f"a list of {', '.join(TRACKERS)}")
        _require(len(set(self.report_to)) == len(self.report_to), "tracking.report_to", self.report_to, "no repeats")
        _path("tracking.dir", self.dir)
        for key in ("project", "run_name"):
            value = getattr(self, key)
            ok = value is None or (0 < len(value.encode("utf-8", "replace")) <= MAX_NAME_BYTES and "/" not in value)
            ok = ok and (value is None or "\x00" not in value)
            _require(ok, f"tracking.{key}", value, f"a name of 1 to {MAX_NAME_BYTES} bytes without '/', or null")
        _count("tracking.table_prompts", self.table_prompts, 0, MAX_COUNT)
        _count("tracking.table_max_rows", self.table_max_rows, 0, MAX_COUNT)


@dataclass
class ExportConfig:
    # what `raft-data export` writes into dataset and model cards that the artifacts do not record themselves;
    # never part of a config hash (the prompts section is part of generate's, so the license lives here)
    prompts_license: str = "unknown"  # the license of the prompts source, as a Hub license id (e.g. mit, cc-by-4.0)
    model_license: str = "unknown"  # the base model's license (SmolLM2: apache-2.0)

    def __post_init__(self) -> None:
        for key in ("prompts_license", "model_license"):
            value = getattr(self, key)
            ok = 0 < len(value) <= 100 and all(c.isalnum() or c in "-_." for c in value)
            _require(ok, f"export.{key}", value, "a license id of letters, digits, '-', '_' and '.' (or unknown)")


@dataclass
class Config:
    experiment: ExperimentConfig
    model: ModelConfig
    prompts: PromptsConfig
    generate: GenerateConfig
    score: ScoreConfig
    select: SelectConfig
    # TRL SFTConfig fields, passed through as they are (checked against SFTConfig when training starts).
    sft: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)

    def __post_init__(self) -> None:
        # settings of two sections that only work together
        _require(
            self.generate.adaptive_target == 0 or self.prompts.answer_column is not None,
            "generate.adaptive_target",
            self.generate.adaptive_target,
            "0 unless prompts.answer_column names the gold answers (adaptive sampling counts correct samples)",
        )
        for key, value in (("score.tasks", self.score.tasks), ("select.task_quota", self.select.task_quota)):
            need = "empty unless prompts.task_column is set"
            _require(not value or self.prompts.task_column is not None, key, value, need)
        _require(
            not self.select.level_quota or self.prompts.level_column is not None,
            "select.level_quota",
            self.select.level_quota,
            "empty unless prompts.level_column is set",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {
    "experiment": ExperimentConfig,
    "model": ModelConfig,
    "prompts": PromptsConfig,
    "generate": GenerateConfig,
    "score": ScoreConfig,
    "select": SelectConfig,
    "eval": EvalConfig,
    "rounds": RoundsConfig,
    "lora": LoraConfig,
    "executor": ExecutorConfig,
    "tracking": TrackingConfig,
    "export": ExportConfig,
    "decontam": DecontamConfig,
}
