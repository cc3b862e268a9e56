"""Checks of a model folder that load no model: its weights are finite numbers, and the config's token budgets and
LoRA rank fit the model (its context and width, read from config.json).

Run as (what every model load and `raft-sft train` do):
    from raft_data.models.checks import check_finite_weights, check_model_limits
    check_finite_weights("runs/imdb_positive/round-0000/model")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raft_data.config import Config
from raft_data.errors import ConfigError, ModelLoadError

# config.json keys that hold a model's context (positions) and width (hidden size), in the order they are tried
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
MAX_CONFIG_BYTES = 1 << 20


def nonfinite_weights(folder: str | Path) -> str | None:
    """Where a model folder's weights first hold NaN or infinity ("model.safetensors tensor <name>: <n> values"),
    or None when they are all finite. Reads the folder's safetensors files one tensor at a time (no model is built;
    a 135M-parameter model takes well under a second). Pickled `.bin` weights are never opened here; a folder without
    safetensors files is not checked. A file that cannot be read is a ModelLoadError."""
    import torch
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        return f"{file.name} tensor {name}: {int((~torch.isfinite(tensor)).sum())} values"
        except Exception as e:  # a truncated or damaged file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelLoadError(f"model path {str(folder)!r}: {file.name} cannot be read: {first}") from None
    return None


def check_finite_weights(folder: str | Path) -> None:
    """Refuse a model folder whose weights hold NaN or infinity, with a ModelLoadError that names the file and the
    tensor: a model trained into NaN must never be sampled from or trained on."""
    where = nonfinite_weights(folder)
    if where is not None:
        raise ModelLoadError(
            f"model path {str(folder)!r}: its weights are not finite ({where} are NaN or infinite); it cannot be "
            "sampled from or trained on"
        )


def model_shape(folder: str | Path) -> dict[str, int]:
    """The model's `context` (positions) and `width` (hidden size) from its config.json, where it states them
    (a multimodal config's text_config too); empty when the folder has no readable config.json (loading the model
    reports that)."""
    path = Path(folder) / "config.json"
    try:
        with open(path, "rb") as f:
            data: Any = json.loads(f.read(MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    layers = [data, data.get("text_config") if isinstance(data.get("text_config"), dict) else {}]
    out: dict[str, int] = {}
    for name, keys in (("context", CONTEXT_KEYS), ("width", WIDTH_KEYS)):
        for layer in layers:
            value = next((layer[k] for k in keys if k in layer), None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                out[name] = value
                break
    return out


def check_model_limits(cfg: Config, folder: str | Path) -> None:
    """Refuse, before any model loads, settings that cannot work with the model in `folder`: a token budget (new
    tokens, or prompt plus new tokens) beyond its context, and a LoRA rank beyond its width. A ConfigError names the
    setting, its value and the model's limit. Rounds fine-tune the same architecture, so the base model's limits
    hold for every round's model."""
    shape = model_shape(folder)
    where = f"(model {str(folder)!r})"
    context, width = shape.get("context"), shape.get("width")
    if context is not None:
        g = cfg.generate
        budgets = [("generate.max_new_tokens", g.max_new_tokens, context - 1)]
        if cfg.eval.max_new_tokens is not None:
            budgets.append(("eval.max_new_tokens", cfg.eval.max_new_tokens, context - 1))
        if g.max_prompt_tokens is not None:
            budgets.append(("generate.max_prompt_tokens", g.max_prompt_tokens, context - g.max_new_tokens))
        for key, value, most in budgets:
            if value > most:
                raise ConfigError(
                    f"{key}={value} is invalid: expected at most {max(most, 0)}: the model's context is {context} "
                    f"tokens, prompt and new tokens together {where}"
                )
    if width is not None and cfg.lora.r > width:
        raise ConfigError(f"lora.r={cfg.lora.r} is invalid: expected at most the model's width, {width} {where}")
