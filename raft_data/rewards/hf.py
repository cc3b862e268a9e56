"""Hugging Face sequence-classification reward models: `hf_reward` loads one once and returns a reward callable."""

from __future__ import annotations

from pathlib import Path

from raft_data.errors import ConfigError
from raft_data.rewards.builtin import RewardFn


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    except Exception as e:  # a broken folder fails in many ways inside transformers; all are the user's folder
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"reward model {path!r} could not be loaded: {first[:300]}") from e
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
