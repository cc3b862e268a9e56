"""Teacher-forced log-probabilities log p(y|x) of completions under a causal language model.

The score stage uses them for the paper's KL-regularised rank key, `r - beta * (log p_t(y|x) - log p_0(y|x))`.
A completion is read as the generator produced it: the prompt tokenized as `generate` tokenizes it, then the
completion's tokens, then the end-of-sequence token when the sample ended on it (not truncated).

Run as:
    python -m raft_data.logprobs --model assets/smollm2-135m-instruct "The film is" " a delight"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from raft_data.config import ModelConfig

LogprobFn = Callable[[list[str], list[str], list[bool]], list[float]]


def load_logprob_fn(path: str, model_cfg: ModelConfig, device: str = "cpu", batch_size: int = 16) -> LogprobFn:
    """Load a model once; return `logprobs(prompts, completions, ended) -> list[float]` (sums over the completion's
    tokens). Batches are sorted by length and right-padded, so a sample's value does not depend on its batch."""
    import torch

    from raft_data.backends import load_tokenizer_and_model

    tokenizer, model = load_tokenizer_and_model(path, model_cfg, device)
    eos = tokenizer.eos_token_id

    @torch.inference_mode()
    def logprobs(prompts: list[str], completions: list[str], ended: list[bool]) -> list[float]:
        seqs: list[tuple[list[int], int]] = []  # (token ids, number of prompt tokens)
        for p, c, e in zip(prompts, completions, ended, strict=True):
            p_ids = tokenizer(p)["input_ids"]
            c_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + ([eos] if e else [])
            seqs.append((p_ids + c_ids, len(p_ids)))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        out = [0.0] * len(seqs)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(seqs[i][0]) for i in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                ids[j, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
                mask[j, : len(seqs[i][0])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for j, i in enumerate(rows):
                tokens, n_prompt = seqs[i]
                if len(tokens) == n_prompt:
                    continue  # an empty completion that did not end: log 1
                # position t predicts token t + 1
                pred = logits[j, n_prompt - 1 : len(tokens) - 1].log_softmax(-1)
                target = torch.tensor(tokens[n_prompt:], device=pred.device)
                out[i] = pred.gather(1, target[:, None]).sum().item()
        return out

    return logprobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print log p(completion | prompt) under a model folder.")
    parser.add_argument("--model", required=True)
    parser.add_argument("prompt")
    parser.add_argument("completion")
    args = parser.parse_args(argv)
    fn = load_logprob_fn(args.model, ModelConfig(name_or_path=args.model))
    print(f"{fn([args.prompt], [args.completion], [True])[0]:.6f}")


if __name__ == "__main__":
    main()
