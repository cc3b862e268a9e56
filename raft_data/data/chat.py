"""Prompt formatting before sampling: chat templates and prompts too long for the model.

A prompt is either plain text or a conversation: a JSON list of `{"role", "content"}` messages, which is how
`prompts.parquet` keeps a source column of message lists. With `generate.chat_template: true` both go through the
tokenizer's chat template with the generation prompt added (plain text becomes one user message). A prompt longer
than `generate.max_prompt_tokens` (by default the model's context minus `max_new_tokens`) is skipped or cut from the
left, as `generate.long_prompts` says, and reported; it never stops a shard halfway.

Run as:
    raft-data chat --config pipelines/imdb_positive.yaml --round 0 generate.chat_template=true   # show the texts
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from raft_data.config import GenerateConfig
from raft_data.errors import ConfigError, ModelLoadError


@dataclass
class FormattedPrompts:
    texts: list[str | None]  # what the model is conditioned on, None for a skipped prompt
    chat_template: str | None  # the template text used, recorded in the manifest
    max_prompt_tokens: int | None  # the limit that was applied (None: no limit known)
    long_prompt_ids: list[str] = field(default_factory=list)  # prompts over the limit (skipped or cut)

    def report(self, action: str) -> dict:
        return {
            "max_prompt_tokens": self.max_prompt_tokens,
            "action": action,
            "n_long": len(self.long_prompt_ids),
            "long_prompt_ids": self.long_prompt_ids,
        }


def parse_messages(text: str) -> list[dict] | None:
    """The conversation a prompt holds, or None if it is plain text."""
    if not text.lstrip().startswith("[{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    return value if ok and value else None


def context_limit(model_path: str, cfg: GenerateConfig) -> int | None:
    """Prompt tokens allowed: the configured limit, else the model's context minus the tokens to generate."""
    if cfg.max_prompt_tokens is not None:
        return cfg.max_prompt_tokens
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        context = json.loads(config_file.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise ModelLoadError(f"{config_file} is not a valid model config (JSON object)") from None
    return None if context is None else max(1, int(context) - cfg.max_new_tokens)


def format_prompts(
    prompt_ids: list[str], prompts: list[str], tokenizer, cfg: GenerateConfig, limit: int | None
) -> FormattedPrompts:
    """Render every prompt as the model will see it, and apply the length rule. Deterministic."""
    template = None
    if cfg.chat_template:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ConfigError("generate.chat_template=true but the model's tokenizer has no chat template")
    texts: list[str | None] = []
    long_ids: list[str] = []
    for pid, prompt in zip(prompt_ids, prompts, strict=True):
        messages = parse_messages(prompt)
        if messages is not None and not cfg.chat_template:
            raise ConfigError(
                f"prompt_id={pid!r} is a list of chat messages: set generate.chat_template=true to render it"
            )
        text = prompt
        if cfg.chat_template:
            conversation = messages if messages is not None else [{"role": "user", "content": prompt}]
            text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        if limit is not None:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            if len(ids) > limit:
                long_ids.append(pid)
                if cfg.long_prompts == "skip":
                    text = None
                else:  # truncate_left: keep the end, which the completion continues
                    text = tokenizer.decode(ids[len(ids) - limit :], skip_special_tokens=False)
        texts.append(text)
    return FormattedPrompts(texts, template, limit, long_ids)
