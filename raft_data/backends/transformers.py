"""The `transformers` generation backend: batched, left-padded sampling with `generate`, with exactly the
configured sampling settings (nothing from the model's own generation config leaks in).

With `generate.stop`, a sample ends with the first stop string in its decoded text: the text is cut right after it
(the stop string is kept, as vLLM's `include_stop_str_in_output`), `n_tokens` counts the tokens up to the one that
completed it, and the row stops generating at that step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from raft_data.backends.base import Completion, SampleFn
from raft_data.config import GenerateConfig, ModelConfig, derived_seed
from raft_data.models.loading import load_tokenizer_and_model, resolve_device


def stop_token_ids(tokenizer, model) -> set[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def stop_string_criteria(tokenizer, stop: list[str], n_prompt: int):
    """A stopping criterion that ends each row once its decoded new tokens hold a stop string. It decodes exactly as
    `_completion` does, so the row stops at the step whose token completes the stop string that cuts the text."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
            texts = tokenizer.batch_decode(input_ids[:, n_prompt:], skip_special_tokens=True)
            done = [any(s in text for s in stop) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopStrings()])


def stop_kwargs(tokenizer, stop: list[str], enc) -> dict:
    """generate's `stopping_criteria` for a batch encoded as `enc`, when stop strings are configured."""
    if not stop:
        return {}
    return {"stopping_criteria": stop_string_criteria(tokenizer, stop, enc["input_ids"].shape[1])}


# generate.batch_size: auto
AUTO_CPU_BATCH = 16  # prompts per batch on CPU, where a bigger batch buys little
AUTO_MEMORY_SHARE = 0.5  # of the GPU's memory left after the weights, for the KV cache and logits of one batch
AUTO_MAX_BATCH = 512  # prompts per batch at most


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token of one sequence takes: keys and values of every layer's KV heads."""
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()


def auto_batch_size(memory: float, per_token: int, vocab: int, tokens: int, rows_per_prompt: int) -> int:
    """Prompts per batch whose rows (`rows_per_prompt` each, `tokens` long) fit in `memory` bytes: each row holds its
    KV cache and three float32 copies of the next-token logits (logits, processed scores, probabilities)."""
    per_row = per_token * tokens + 3 * 4 * vocab
    return max(1, min(AUTO_MAX_BATCH, int(memory // (per_row * rows_per_prompt))))


def prompt_batch_size(cfg: GenerateConfig, model, tokenizer, prompts: list[str], rows_per_prompt: int) -> int:
    """`cfg.batch_size`, with auto resolved: AUTO_CPU_BATCH off CUDA; on CUDA for the longest of `prompts`, from the
    GPU's total memory (not its free memory, so one GPU model always batches the same way and a rerun draws the same
    samples)."""
    if cfg.batch_size != "auto":
        return cfg.batch_size
    if model.device.type != "cuda":
        return AUTO_CPU_BATCH
    import torch

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = AUTO_MEMORY_SHARE * (torch.cuda.get_device_properties(model.device).total_memory - weights)
    tokens = max((len(ids) for ids in tokenizer(prompts)["input_ids"]), default=0) + cfg.max_new_tokens
    return auto_batch_size(memory, kv_bytes_per_token(model), model.config.vocab_size, tokens, rows_per_prompt)


def transformers_backend(model_path: str, model_cfg: ModelConfig, cfg: GenerateConfig) -> SampleFn:
    """Batched, left-padded sampling with `generate`, with exactly the configured sampling settings."""
    tokenizer, model = load_tokenizer_and_model(model_path, model_cfg, resolve_device(cfg.device))
    return transformers_sampler(tokenizer, model, cfg)


def transformers_sampler(tokenizer, model, cfg: GenerateConfig) -> SampleFn:
    """The same sampling from a tokenizer and model already loaded (eval samples and scores with one load). The
    tokenizer is switched to left padding and the model's generation config replaced; nothing else changes."""
    import torch
    from transformers import GenerationConfig

    device = model.device
    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer, model)
    greedy = cfg.temperature == 0
    # A fresh GenerationConfig, so nothing from the model's generation_config.json (or transformers' top_k=50
    # default) leaks in: every sampling knob is set here from our config.
    gen_cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else cfg.temperature,
        top_p=None if greedy else cfg.top_p,
        top_k=None if greedy else cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        # greedy `generate` refuses num_return_sequences > 1: the prompts are repeated K times instead
        num_return_sequences=1 if greedy else cfg.n_samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stops),
    )
    model.generation_config = gen_cfg
    one_each = copy.deepcopy(gen_cfg)
    one_each.num_return_sequences = 1

    def shared_prefill_generate(enc) -> torch.Tensor:
        """Prefill each prompt once, copy its KV cache K ways, and let `generate` sample from there.

        The cache holds all prompt tokens but the last, so `generate` sees the same K-way, prompt-major batch as
        with `num_return_sequences=K` and draws from the same logits with the same processors and RNG calls.
        """
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # what `generate` derives for left padding
        cache = DynamicCache(config=model.config)
        model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(cfg.n_samples)
        k = cfg.n_samples
        return model.generate(
            input_ids=ids.repeat_interleave(k, 0),
            attention_mask=mask.repeat_interleave(k, 0),
            past_key_values=cache,
            generation_config=one_each,
            **stop_kwargs(tokenizer, cfg.stop, enc),
        )

    @torch.inference_mode()
    def sample(prompts: list[str], seed: int) -> list[list[Completion]]:
        torch.manual_seed(seed)
        out: list[list[Completion]] = []
        size = prompt_batch_size(cfg, model, tokenizer, prompts, cfg.n_samples)
        for start in range(0, len(prompts), size):
            batch = prompts[start : start + size]
            enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
            if cfg.shared_prefill and enc["input_ids"].shape[1] > 1:
                seqs = shared_prefill_generate(enc)
            elif greedy:
                k = cfg.n_samples
                repeated = {name: t.repeat_interleave(k, 0) for name, t in enc.items()}
                seqs = model.generate(**repeated, generation_config=gen_cfg, **stop_kwargs(tokenizer, cfg.stop, enc))
            else:
                seqs = model.generate(**enc, generation_config=gen_cfg, **stop_kwargs(tokenizer, cfg.stop, enc))
            new = seqs[:, enc["input_ids"].shape[1] :].tolist()  # rows are prompt-major: K per prompt
            for p in range(len(batch)):
                row = [
                    _completion(tokenizer, new[p * cfg.n_samples + k], stops, cfg.stop) for k in range(cfg.n_samples)
                ]
                out.append(row)
        return out

    return sample


def row_seed(seed: int, prompt_idx: int, sample_idx: int) -> int:
    """The seed of one row of `transformers_eval_sampler`: its own random stream, whatever batch it is in."""
    return derived_seed(seed, prompt_idx, sample_idx, hex_digits=15)


def row_sampler(greedy: list[bool], seeds: list[int], cfg: GenerateConfig, device: str = "cpu"):
    """A logits processor that picks every row's next token itself and leaves `generate` (run greedy) one choice:
    the argmax for a greedy row; for a sampled row a draw from the configured distribution (temperature, then
    top-k, then top-p, as `generate` orders them) by the Gumbel-max trick, with noise from the row's own generator
    on `device` (the model's: the noise is drawn where the logits are). A row's tokens then depend on its seed, its
    logits and the device's generator only, not on the rows beside it."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()
    if cfg.temperature not in (0, 1.0):
        warpers.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        warpers.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1.0:
        warpers.append(TopPLogitsWarper(cfg.top_p))
    generators = [
        None if g else torch.Generator(device=device).manual_seed(s) for g, s in zip(greedy, seeds, strict=True)
    ]
    drawn = [g for g in generators if g is not None]
    sampled = torch.tensor([not g for g in greedy])

    class RowSampler(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            choice = scores.argmax(-1)
            if sampled.any():
                rows = sampled.to(scores.device)
                logits = warpers(input_ids[rows], scores[rows].float())
                noise = torch.stack([torch.rand(scores.shape[-1], generator=g, device=device) for g in drawn])
                gumbel = -torch.log(-torch.log(noise.clamp(min=1e-20)))
                choice[rows] = (logits + gumbel.to(scores.device)).argmax(-1)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, choice[:, None], 0.0)

    return LogitsProcessorList([RowSampler()])


def transformers_row_generator(tokenizer, model, cfg: GenerateConfig):
    """Every row on its own random stream: one greedy `generate` call per list of rows, whose logits processor
    (`row_sampler`) makes each row's choices. Returns `run(texts, greedy, seeds) -> [Completion]`, one per row, in
    row order; a row's completion depends on its text, its seed and the model only, not on the rows beside it (up to
    the float rounding of a batch's padding). The tokenizer is switched to left padding and the model's generation
    config replaced."""
    import torch
    from transformers import GenerationConfig

    device = model.device
    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer, model)
    # greedy `generate`: the logits processor has already made every choice
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stops),
    )
    model.generation_config = gen_cfg

    @torch.inference_mode()
    def run(texts: list[str], greedy: list[bool], seeds: list[int]) -> list[Completion]:
        enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        seqs = model.generate(
            **enc,
            generation_config=gen_cfg,
            logits_processor=row_sampler(greedy, seeds, cfg, str(device)),
            **stop_kwargs(tokenizer, cfg.stop, enc),
        )
        new = seqs[:, enc["input_ids"].shape[1] :].tolist()
        return [_completion(tokenizer, ids, stops, cfg.stop) for ids in new]

    return run


def transformers_eval_sampler(tokenizer, model, cfg: GenerateConfig):
    """Eval's sampler: one `generate` call per batch for one greedy and `cfg.n_samples` sampled completions of each
    prompt (`transformers_row_generator`; all of them greedy at temperature 0), instead of a pass each. Returns
    `sample(prompts, seed, first) -> [(greedy, sampled)]`, where `first` is the index of the first prompt, so a
    row's seed does not depend on the batching."""
    run = transformers_row_generator(tokenizer, model, cfg)
    k = cfg.n_samples + 1  # row 0 of each prompt is the greedy one

    def sample(prompts: list[str], seed: int, first: int = 0) -> list[tuple[Completion, list[Completion]]]:
        texts = [p for p in prompts for _ in range(k)]
        greedy = [j == 0 or cfg.temperature == 0 for _ in prompts for j in range(k)]
        seeds = [row_seed(seed, first + p, j) for p in range(len(prompts)) for j in range(k)]
        rows = run(texts, greedy, seeds)
        return [(rows[p * k], rows[p * k + 1 : (p + 1) * k]) for p in range(len(prompts))]

    return sample


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the text ends when cut after its first stop string (the one that ends earliest), or None."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return min(ends) if ends else None


def _completion(tokenizer, ids: list[int], stops: set[int], stop: Sequence[str] = ()) -> Completion:
    """A row of new tokens as a Completion: cut at the first end-of-sequence token, then after the first stop
    string. Padding after a row's end is dropped. Only a row that neither reached a stop nor EOS is truncated."""
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    body = ids if end is None else ids[:end]
    text = tokenizer.decode(body, skip_special_tokens=True)
    cut = _first_stop(text, stop)
    if cut is not None:
        # the fewest tokens whose text holds a stop string: the token that completed it is the last one generated
        n = next(
            k
            for k in range(1, len(body) + 1)
            if _first_stop(tokenizer.decode(body[:k], skip_special_tokens=True), stop) is not None
        )
        return Completion(text=text[:cut], n_tokens=n, truncated=False)
    return Completion(text=text, n_tokens=len(ids) if end is None else end + 1, truncated=end is None)
