"""Build a smaller student from a teacher: the same tokenizer and width, every k-th of its decoder layers.

A layer-dropped copy (as DistilBERT started from every other layer of BERT) starts from the teacher's embeddings,
norms and a spread of its layers, so distillation begins from a model that already reads the language.

Run as:
    raft-sft student --teacher assets/smollm2-135m-instruct --layers 6 --output runs/students/smollm2-l6
"""

from __future__ import annotations

from pathlib import Path

from raft_data.errors import ConfigError
from raft_data.models.loading import save_model_folder


def kept_layers(n_teacher: int, n_student: int) -> list[int]:
    """`n_student` teacher layers spread evenly, the first and the last always kept."""
    if not 1 <= n_student <= n_teacher:
        raise ConfigError(f"--layers={n_student} is invalid: expected 1..{n_teacher}")
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def make_student(teacher: str, output: Path, n_layers: int) -> dict:
    """Save a Llama-family student with `n_layers` of the teacher's layers (and its tokenizer) to `output`."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    big = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    keep = kept_layers(big.config.num_hidden_layers, n_layers)
    config = copy.deepcopy(big.config)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    small = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for name, tensor in big.state_dict().items():
        if ".layers." in name:
            prefix, rest = name.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            if int(idx) not in keep:
                continue
            name = f"{prefix}.layers.{keep.index(int(idx))}.{tail}"
        state[name] = tensor
    small.load_state_dict(state)
    small.tie_weights()
    save_model_folder(small, tokenizer, output)
    n_big, n_small = (sum(p.numel() for p in m.parameters()) for m in (big, small))
    return {"teacher": teacher, "layers": keep, "parameters": n_small, "teacher_parameters": n_big}
