"""Reward functions: plain callables `(prompts, completions) -> list[float]`.

`score.reward` names a built-in below, any importable `module:function` with that signature, or a list of
components (built-ins, functions, Hugging Face sequence-classification reward models) whose weighted sum is the
reward. A reward model is loaded once by `hf_reward`, which returns such a callable.

Run as:
    python -m raft_data.rewards --model assets/reward-minilm "The film is" " a delight from start to end"
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft_data.config import ConfigError, ScoreConfig, reward_component_name

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


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face sequence-classification reward models


def reward_texts(tokenizer, prompts: list[str], completions: list[str], text: str, chat_template: bool) -> list[str]:
    """What the reward model reads. With `chat_template` the prompt is the user turn and the completion the
    assistant turn, rendered with the reward model's own template (which need not be the policy's)."""
    if not chat_template:
        if text == "completion":
            return list(completions)
        return [p + c for p, c in zip(prompts, completions, strict=True)]
    if not tokenizer.chat_template:
        raise ConfigError(f"reward model {tokenizer.name_or_path!r} has no chat template (set chat_template: false)")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
        )
        for p, c in zip(prompts, completions, strict=True)
    ]


def resolve_label(config, label: int | str | None, path: str) -> int | None:
    """The logit index a classifier is read at; None for a regressor (one logit)."""
    n = config.num_labels
    if label is None:
        if n != 1:
            names = ", ".join(str(config.id2label[i]) for i in range(n))
            raise ConfigError(f"reward model {path!r} has {n} labels ({names}): choose one with `label:`")
        return None
    if isinstance(label, int):
        if not 0 <= label < n:
            raise ConfigError(f"reward model {path!r}: label={label} is out of range, it has {n} labels")
        return label
    by_name = {str(v): int(k) for k, v in config.id2label.items()}
    if label not in by_name:
        raise ConfigError(f"reward model {path!r} has no label {label!r} (labels: {', '.join(by_name)})")
    return by_name[label]


def hf_reward(
    path: str,
    label: int | str | None = None,
    output: str = "probability",
    chat_template: bool = False,
    text: str = "prompt_completion",
    batch_size: int = 16,
    max_length: int = 512,
    device: str = "cpu",
    sort_by_length: bool = True,
) -> RewardFn:
    """Load a sequence-classification model once and return a reward callable.

    A regressor (one logit) gives that logit; a classifier gives the chosen label's softmax probability or its raw
    logit. Texts are scored in batches with attention masks, longest first so that each batch holds texts of
    similar length (little padding); padding is on the right, so a text's score does not depend on its batch.
    The callable's `reward_info` attribute describes it for the manifest.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"reward model {path!r} is not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    index = resolve_label(model.config, label, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        # decoder reward models find each row's last token through the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"

    @torch.inference_mode()
    def score_fn(prompts: list[str], completions: list[str]) -> list[float]:
        texts = reward_texts(tokenizer, prompts, completions, text, chat_template)
        ids = tokenizer(texts, add_special_tokens=not chat_template, truncation=True, max_length=max_length)
        ids = ids["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i])) if sort_by_length else list(range(len(ids)))
        out = [0.0] * len(ids)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(device)
            logits = model(**batch).logits.float()
            if index is None:
                values = logits[:, 0]
            elif output == "logit":
                values = logits[:, index]
            else:
                values = logits.softmax(-1)[:, index]
            for i, v in zip(rows, values.tolist(), strict=True):
                out[i] = v
        return out

    score_fn.reward_info = {
        "model": path,
        "kind": "regressor" if index is None else "classifier",
        "label": None if index is None else str(model.config.id2label[index]),
        "label_index": index,
        "output": "logit" if index is None else output,
        "text": text,
        "chat_template": tokenizer.chat_template if chat_template else None,
        "max_length": max_length,
    }
    return score_fn


# ---------------------------------------------------------------------------------------------------------------------
# The configured reward: one or several weighted components


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


def template_digest(template: str | None) -> str | None:
    return None if template is None else hashlib.sha256(template.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score one prompt and completion with a reward model folder.")
    parser.add_argument("--model", required=True, help="a sequence-classification model folder")
    parser.add_argument("--label", default=None, help="classifiers: label name or index")
    parser.add_argument("--chat-template", action="store_true")
    parser.add_argument("prompt")
    parser.add_argument("completion")
    args = parser.parse_args(argv)
    label = int(args.label) if args.label is not None and args.label.isdigit() else args.label
    fn = hf_reward(args.model, label=label, chat_template=args.chat_template)
    print(f"{fn([args.prompt], [args.completion])[0]:.6f}")


if __name__ == "__main__":
    main()
