"""The backend contract. A backend is a function that loads a model once and returns a `SampleFn`:

    sample(prompts: list[str], seed: int) -> list[list[Completion]]   # K completions per prompt, in prompt order

The generate stage calls it once per shard with the shard's seed, so a shard's samples depend only on its prompts,
the config and its seed, never on which worker ran it or which shards ran before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from raft_data.config import GenerateConfig, ModelConfig


@dataclass
class Completion:
    text: str
    n_tokens: int  # generated tokens, the end-of-sequence token (or the one that completed a stop string) included
    truncated: bool  # stopped by max_new_tokens, not by end-of-sequence or a stop string (generate.stop)
    error: str | None = None  # the backend's call for this prompt failed after its retries: no sample, only why
    prompt_tokens: int | None = None  # tokens of the prompt as the endpoint reported them (first choice of a prompt)


SampleFn = Callable[[list[str], int], list[list[Completion]]]
BackendFn = Callable[[str, ModelConfig, GenerateConfig], SampleFn]
