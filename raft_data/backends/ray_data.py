"""Generation through Ray Data (`executor.kind: ray_data`): one row per sample in, the sample out, from replicas that
each hold the model. `generate.backend: vllm` builds a `ray.data.llm` vLLM engine processor (one engine per
replica); `transformers` an actor pool under `map_batches`, each actor holding the model loaded once.

A row's seed depends only on (experiment seed, round, shard, prompt, sample index):
- vLLM: the seed the `vllm` backend gives that sample (shard seed + prompt index x K + sample index, as vLLM seeds
  the K children of one request), each row its own request;
- transformers: `row_seed(shard seed, prompt index, sample index)`, each row on its own random stream
  (`transformers_row_generator`), so a row's sample does not depend on the rows batched with it.

Input rows hold `prompt` (as the model reads it), `prompt_id`, `sample_idx`, `prompt_idx` (the prompt's index
among its shard's sampled prompts), `shard_seed` and the shard engine's `shard_idx`; the pipeline returns the
columns of `OUTPUT` and `shard_idx`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from raft_data.backends.base import Completion
from raft_data.backends.transformers import prompt_batch_size, row_seed, transformers_row_generator
from raft_data.backends.vllm import length_capped, platform_defaults, sample_seed, sampling_kwargs
from raft_data.config import ExecutorConfig, GenerateConfig, ModelConfig
from raft_data.errors import BackendError, ModelLoadError
from raft_data.models.checks import check_finite_weights
from raft_data.models.loading import load_tokenizer_and_model, resolve_device
from raft_data.storage import SHARD_COLUMN, actor_pool

OUTPUT = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)
RAY_DATA_BACKENDS = ("transformers", "vllm")


def with_completions(batch: pa.Table, completions: list[Completion]) -> pa.Table:
    return (
        batch.append_column("completion", pa.array([c.text for c in completions], pa.string()))
        .append_column("n_tokens", pa.array([c.n_tokens for c in completions], pa.int32()))
        .append_column("truncated", pa.array([c.truncated for c in completions], pa.bool_()))
    )


class TransformersReplica:
    """One replica of the actor pool: the model loaded once, then every batch of rows sampled row by row."""

    def __init__(self, model_path: str, model: dict[str, Any], generate: dict[str, Any]) -> None:
        self.cfg = GenerateConfig(**generate)
        self.tokenizer, self.model = load_tokenizer_and_model(
            model_path, ModelConfig(**model), resolve_device(self.cfg.device)
        )
        self.run = transformers_row_generator(self.tokenizer, self.model, self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch["prompt"].to_pylist()
        # rows per forward pass: what the local path puts in one, generate.batch_size prompts of K samples each
        k = self.cfg.n_samples
        rows_per_pass = prompt_batch_size(self.cfg, self.model, self.tokenizer, texts, k) * k
        seeds = [
            row_seed(s, p, k)
            for s, p, k in zip(
                batch["shard_seed"].to_pylist(),
                batch["prompt_idx"].to_pylist(),
                batch["sample_idx"].to_pylist(),
                strict=True,
            )
        ]
        greedy = [self.cfg.temperature == 0] * len(texts)
        out: list[Completion] = []
        for start in range(0, len(texts), rows_per_pass):
            end = start + rows_per_pass
            out += self.run(texts[start:end], greedy[start:end], seeds[start:end])
        return with_completions(batch, out)


def transformers_pipeline(model_path: str, model_cfg: ModelConfig, cfg: GenerateConfig, executor: ExecutorConfig):
    """`ds -> ds` with the transformers actor pool: `executor.ray_data_replicas` actors, one GPU each on CUDA."""
    gpus = 1 if resolve_device(cfg.device) == "cuda" else 0
    kwargs = {"model_path": model_path, "model": model_cfg.__dict__, "generate": cfg.__dict__}
    return actor_pool(TransformersReplica, kwargs, executor, gpus)


def vllm_request(row: dict[str, Any], cfg: GenerateConfig) -> dict[str, Any]:
    """The processor's preprocess: the row's own sampling parameters (one sample, its own seed)."""
    seed = sample_seed(int(row["shard_seed"]), int(row["prompt_idx"]), int(row["sample_idx"]), cfg.n_samples)
    return {"prompt": row["prompt"], "sampling_params": sampling_kwargs(cfg, seed, n=1)}


def vllm_sample(row: dict[str, Any], cfg: GenerateConfig, eos_ids: frozenset[int]) -> dict[str, Any]:
    """The processor's postprocess: the row's keys and its sample, `truncated` as vLLM's finish reason "length"."""
    tokens = list(row["generated_tokens"])
    text = row["generated_text"]
    last = int(tokens[-1]) if tokens else None
    return {
        "prompt_id": row["prompt_id"],
        "sample_idx": int(row["sample_idx"]),
        SHARD_COLUMN: int(row[SHARD_COLUMN]),
        "completion": text,
        "n_tokens": len(tokens),
        "truncated": length_capped(len(tokens), last, text, cfg, set(eos_ids)),
    }


def end_token_ids(model_path: str, tokenizer) -> frozenset[int]:
    """The ids vLLM ends a sample on: the tokenizer's end-of-sequence id and the generation config's."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if (Path(model_path) / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return frozenset(ids)


def vllm_pipeline(
    model_path: str, model_cfg: ModelConfig, cfg: GenerateConfig, executor: ExecutorConfig, tokenizer
) -> Callable:
    """`ds -> ds` through a `ray.data.llm` vLLM engine processor: `executor.ray_data_replicas` engines, each fed
    `executor.ray_data_batch_size` rows at a time. Prompts arrive as the model reads them (chat template already
    applied), so the processor's chat-template, tokenize and detokenize stages are off and the engine detokenizes
    (stop strings need it)."""
    try:
        import vllm  # noqa: F401  (the engine runs in the replicas; its platform settings are read here)
        from ray.data import llm
    except ImportError as e:
        raise BackendError(
            f"executor.kind=ray_data with generate.backend=vllm needs vLLM and Ray Data's LLM module ({e}): run "
            "`make setup-vllm` and run the stage from .venv-vllm"
        ) from None
    if not (Path(model_path) / "config.json").is_file():
        raise ModelLoadError(f"model path {model_path!r} is not a model folder (no config.json)")
    check_finite_weights(model_path)  # as the local vllm backend: an engine would sample from NaN weights silently
    from vllm.platforms import current_platform

    engine_kwargs = {
        "dtype": model_cfg.dtype,
        "trust_remote_code": model_cfg.trust_remote_code,
        **platform_defaults(),
        **cfg.engine_kwargs,
    }
    options: dict[str, Any] = {}
    if current_platform.is_cpu():
        # Ray Data reserves one GPU per engine unless the engine's resources are given: on CPU, CPUs only
        options["placement_group_config"] = {"bundles": [{"CPU": executor.ray_data_cpus_per_replica}]}
    config = llm.vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs,
        concurrency=executor.ray_data_replicas,
        batch_size=executor.ray_data_batch_size,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=False,
        **options,
    )
    build = getattr(llm, "build_processor", None) or llm.build_llm_processor  # renamed in newer Ray
    eos_ids = end_token_ids(model_path, tokenizer)

    def transform(dataset):
        # built once Ray is up: the processor joins the cluster the shard engine started (executor.ray_address)
        processor = build(
            config,
            preprocess=functools.partial(vllm_request, cfg=cfg),
            postprocess=functools.partial(vllm_sample, cfg=cfg, eos_ids=eos_ids),
        )
        return processor(dataset)

    return transform


def generation_pipeline(
    backend: str, model_path: str, model_cfg: ModelConfig, cfg: GenerateConfig, executor: ExecutorConfig, tokenizer
) -> Callable:
    """The Ray Data pipeline of `generate.backend` (one of RAY_DATA_BACKENDS: `openai` has none, its server
    already batches)."""
    if backend == "vllm":
        return vllm_pipeline(model_path, model_cfg, cfg, executor, tokenizer)
    return transformers_pipeline(model_path, model_cfg, cfg, executor)
