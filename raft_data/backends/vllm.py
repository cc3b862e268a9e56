"""The `vllm` generation backend: vLLM's offline engine, one request per prompt with `SamplingParams(n=K)`.

The K samples of a prompt share its prefill. Engine settings come from `generate.engine_kwargs` as they are
(tensor_parallel_size, dtype, max_model_len, gpu_memory_utilization, ...). vLLM pins its own torch and
transformers, so it lives in its own environment: `make setup-vllm` builds `.venv-vllm` with the CPU build, and the
generate stage runs from there as its own process; the engine's memory is gone when that process exits, before
`score` and `raft-sft train` load their models.

Run as:
    make setup-vllm
    make generate-vllm ROUND=0                       # = the command below, with the CPU engine's settings
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/raft-data generate --config pipelines/imdb_positive.yaml --round 0 \\
        generate.backend=vllm
"""

from __future__ import annotations

import sys
from pathlib import Path

from raft_data.backends.base import Completion, SampleFn
from raft_data.config import GenerateConfig, ModelConfig
from raft_data.errors import BackendError, ModelLoadError
from raft_data.models.checks import check_finite_weights


def vllm_backend(model_path: str, model_cfg: ModelConfig, cfg: GenerateConfig) -> SampleFn:
    """Start a vLLM engine on `model_path` and return a `sample` function that runs one request per prompt."""
    try:
        import vllm
    except ImportError as e:
        raise BackendError(
            f"generate.backend='vllm' needs vLLM, which this Python ({sys.executable}) cannot import ({e}); run "
            "`make setup-vllm`, then run the generate stage from .venv-vllm (`make generate-vllm`)"
        ) from None
    if not (Path(model_path) / "config.json").is_file():
        raise ModelLoadError(f"model path {model_path!r} is not a model folder (no config.json)")
    check_finite_weights(model_path)  # the engine would sample from NaN weights without a word

    engine_kwargs = {"dtype": model_cfg.dtype, **platform_defaults(), **cfg.engine_kwargs}
    llm = vllm.LLM(model=model_path, trust_remote_code=model_cfg.trust_remote_code, **engine_kwargs)

    def sample(prompts: list[str], seed: int) -> list[list[Completion]]:
        # Each prompt gets its own seed; vLLM seeds the K children of a request as seed, seed + 1, ..., so no seed
        # repeats within the shard, and a shard's samples depend only on its prompts, the config and its seed.
        params = [sampling_params(vllm, cfg, sample_seed(seed, i, 0, cfg.n_samples)) for i in range(len(prompts))]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return [
            [
                Completion(text=o.text, n_tokens=len(o.token_ids), truncated=o.finish_reason == "length")
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            for out in outputs
        ]

    return sample


def platform_defaults() -> dict:
    """Engine settings this platform needs, under the user's `generate.engine_kwargs`.

    On the CPU build (vllm-cpu 0.32), a seeded request whose prefill is split over steps (chunked prefill: prompts
    longer than the step's token budget, e.g. K = 8 copies of a 512-token prompt) crashes the engine with "CPU
    Generator does not use offset"; whole prefills avoid it. GPUs keep vLLM's defaults.
    """
    from vllm.platforms import current_platform

    return {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}


def sampling_kwargs(cfg: GenerateConfig, seed: int, n: int) -> dict:
    """Exactly the configured sampling settings as `vllm.SamplingParams` keywords; vLLM's top_k=0 means no top-k
    limit, as ours does. Stop strings are kept in the text, as the transformers backend keeps them (a sample that
    ends on one is not truncated)."""
    greedy = cfg.temperature == 0
    stop = {"stop": list(cfg.stop), "include_stop_str_in_output": True} if cfg.stop else {}
    return {
        "n": n,
        "temperature": cfg.temperature,
        "top_p": 1.0 if greedy else cfg.top_p,
        "top_k": 0 if greedy else cfg.top_k,
        "max_tokens": cfg.max_new_tokens,
        "seed": seed,
        **stop,
    }


def sampling_params(vllm, cfg: GenerateConfig, seed: int):
    """One request's `vllm.SamplingParams`: K samples of one prompt, seeded `seed`, `seed + 1`, ... by vLLM."""
    return vllm.SamplingParams(**sampling_kwargs(cfg, seed, cfg.n_samples))


def sample_seed(shard_seed: int, prompt_idx: int, sample_idx: int, n_samples: int) -> int:
    """The seed vLLM samples one row with: the seed `sample` gives its prompt's request (shard seed + prompt index x
    K), plus the sample's index, as vLLM seeds a request's K children. One row per request (Ray Data) is then seeded
    as one request of K samples is."""
    return shard_seed + prompt_idx * n_samples + sample_idx


def length_capped(n_tokens: int, last_token: int | None, text: str, cfg: GenerateConfig, eos_ids: set[int]) -> bool:
    """vLLM's finish reason "length", from what a finished request returns: the token limit reached by a row that
    did not end on an end-of-sequence id (checked first, as vLLM's scheduler does) or on a stop string (the text is
    cut after the first one, which vLLM finds in the text)."""
    if n_tokens < cfg.max_new_tokens or last_token in eos_ids:
        return False
    return not any(s in text for s in cfg.stop)
