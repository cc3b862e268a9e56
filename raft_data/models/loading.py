"""Loading and saving model folders. Only local `save_pretrained` folders are read; remote code runs only when
`model.trust_remote_code` is true.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from raft_data.config import ModelConfig
from raft_data.errors import ModelLoadError
from raft_data.models.checks import check_finite_weights


def resolve_device(name: str) -> str:
    """`auto` -> cuda when a CUDA device is visible, else cpu; `cuda` without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("generate.device='cuda' but no CUDA device is visible")
    return name


def require_model_folder(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"model path {path!r} is not a model folder (no config.json); run `make setup` first?")


def _load_error(path: str, what: str, e: Exception) -> ModelLoadError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelLoadError(f"model path {path!r}: its {what} could not be loaded: {first[:300]}")


def load_tokenizer(path: str, model_cfg: ModelConfig):
    """The tokenizer of a local model folder, with a pad token (the end-of-sequence token when it has none)."""
    from transformers import AutoTokenizer

    require_model_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except Exception as e:  # a broken folder fails in many ways inside transformers; all are the user's folder
        raise _load_error(path, "tokenizer", e) from e
    if isinstance(tokenizer, bool) or not callable(tokenizer):
        raise ModelLoadError(f"model path {path!r} holds no usable tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer_and_model(path: str, model_cfg: ModelConfig, device: str):
    """Load a local save_pretrained folder whose weights are finite; remote code runs only when
    model.trust_remote_code is true."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, model_cfg)
    check_finite_weights(path)  # a model trained into NaN is never sampled from or trained on
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, model_cfg.dtype), trust_remote_code=model_cfg.trust_remote_code
        )
    except Exception as e:  # as above: a broken config.json or weights file is the user's folder
        raise _load_error(path, "model", e) from e
    return tokenizer, model.to(device).eval()


def save_model_folder(model, tokenizer, dest: Path) -> None:
    """save_pretrained a model and its tokenizer into `dest.tmp`, then rename it to `dest` in one step."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
