"""Teacher-forced log-probabilities under a causal language model: the one function that the score stage (the
paper's KL-regularised rank key `r - beta * (log p_t(y|x) - log p_0(y|x))`), eval (KL to the base model, and
the entropy of the next-token distribution from the same pass) and perplexity of reference text all use.

A completion is read as the generator produced it: the prompt tokenized as `generate` tokenizes it, then the
completion's tokens, then the end-of-sequence token when the sample ended on it: not cut by max_new_tokens and not
ended by a stop string (`ended_on_eos`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, overload

from raft_data.config import ModelConfig
from raft_data.errors import DataError
from raft_data.models.loading import load_tokenizer_and_model

LogprobFn = Callable[[list[str], list[str], list[bool]], list[float]]


@overload
def sequence_logprobs(
    model, sequences: list[list[int]], starts: list[int], batch_size: int, pad_id: int, entropy: Literal[False] = ...
) -> tuple[list[float], list[int]]: ...


@overload
def sequence_logprobs(
    model, sequences: list[list[int]], starts: list[int], batch_size: int, pad_id: int, entropy: Literal[True]
) -> tuple[list[float], list[int], list[float]]: ...


def sequence_logprobs(
    model, sequences: list[list[int]], starts: list[int], batch_size: int, pad_id: int, entropy: bool = False
) -> tuple[list[float], list[int]] | tuple[list[float], list[int], list[float]]:
    """For each token sequence, the summed log-probability of its tokens at positions >= start (each predicted
    from the tokens before it) and how many tokens that is. Batches are sorted by length and right-padded, and
    padding is masked out, so a sequence's value does not depend on the batch it falls in.

    With `entropy=True` a third list holds, from the same forward pass, the summed entropy (nats) of the model's
    whole next-token distribution at those positions: -sum_v p(v) log p(v), before any sampling settings."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    sums: list[float] = [0.0] * len(sequences)
    counts: list[int] = [0] * len(sequences)
    entropies: list[float] = [0.0] * len(sequences)
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        batch, batch_starts = [sequences[i] for i in rows], [starts[i] for i in rows]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, s in enumerate(batch):
            ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[j, : len(s)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_dist = torch.log_softmax(logits[:, :-1], dim=-1)
        logp = log_dist.gather(-1, ids[:, 1:, None].to(device))[..., 0]
        positions = torch.arange(1, width)[None, :]
        wanted = (positions >= torch.tensor(batch_starts)[:, None].clamp(min=1)) & mask[:, 1:].bool()
        wanted = wanted.to(device)
        for i, total, n in zip(rows, (logp * wanted).sum(-1).tolist(), wanted.sum(-1).tolist(), strict=True):
            sums[i], counts[i] = total, n
        if entropy:
            per_position = torch.special.entr(log_dist.exp()).sum(-1)  # -p log p, 0 where p = 0
            for i, total in zip(rows, (per_position * wanted).sum(-1).tolist(), strict=True):
                entropies[i] = total
    return (sums, counts, entropies) if entropy else (sums, counts)


def ended_on_eos(completion: str, truncated: bool, stop: Sequence[str] = ()) -> bool:
    """Whether the model itself ended this sample with its end-of-sequence token. A truncated sample did not end;
    one whose text ends with a stop string (`generate.stop`, kept in the text by every backend) was ended by the
    sampler when the string appeared, and no end-of-sequence token was drawn. Generation stops at the first stop
    string, so a sample that ended on EOS cannot end with one."""
    return not truncated and not any(completion.endswith(s) for s in stop)


def completion_token_ids(
    tokenizer, prompts: list[str], completions: list[str], ended: list[bool]
) -> tuple[list[list[int]], list[int]]:
    """(prompt + completion ids, index of the first completion token). The completion text is tokenized again,
    with the end-of-sequence token where generation stopped on it."""
    sequences, starts = [], []
    for prompt, completion, end in zip(prompts, completions, ended, strict=True):
        p_ids = tokenizer(prompt)["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if end:
            c_ids = [*c_ids, tokenizer.eos_token_id]
        sequences.append(p_ids + c_ids)
        starts.append(len(p_ids))
    return sequences, starts


def completion_logprobs(
    model, tokenizer, prompts: list[str], completions: list[str], ended: list[bool], batch_size: int
) -> list[float]:
    """log p(completion | prompt) of each pair, summed over the completion's tokens."""
    sequences, starts = completion_token_ids(tokenizer, prompts, completions, ended)
    return sequence_logprobs(model, sequences, starts, batch_size, tokenizer.pad_token_id)[0]


def reference_logprobs(model, tokenizer, texts: list[str], batch_size: int) -> tuple[list[float], list[int]]:
    """Each text's log-likelihood and the tokens it predicts (the first token is context): what perplexity sums."""
    sequences = [tokenizer(t)["input_ids"] for t in texts]
    return sequence_logprobs(model, sequences, [1] * len(sequences), batch_size, tokenizer.pad_token_id)


def perplexity(model, tokenizer, texts: list[str], batch_size: int) -> float:
    """exp(total negative log-likelihood / total predicted tokens) of the texts; the first token is context."""
    sums, counts = reference_logprobs(model, tokenizer, texts, batch_size)
    if sum(counts) == 0:
        raise DataError("perplexity needs reference texts of at least two tokens")
    return math.exp(-sum(sums) / sum(counts))


def load_logprob_fn(path: str, model_cfg: ModelConfig, device: str = "cpu", batch_size: int = 16) -> LogprobFn:
    """Load a model once; return `logprobs(prompts, completions, ended) -> list[float]`."""
    tokenizer, model = load_tokenizer_and_model(path, model_cfg, device)

    def logprobs(prompts: list[str], completions: list[str], ended: list[bool]) -> list[float]:
        return completion_logprobs(model, tokenizer, prompts, completions, ended, batch_size)

    return logprobs
