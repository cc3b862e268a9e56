"""Evaluate a model on the held-out prompts (never trained on): sample completions, score them with the
experiment's reward, write them as Parquet and print the mean reward.

Run as:
    python -m raft_data.heldout --config pipelines/imdb_positive.yaml --model runs/imdb_positive/round-0000/model \
        --n-prompts 16 --output runs/imdb_positive/eval-round-0000.parquet
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pyarrow as pa

from raft_data import artifacts, schemas
from raft_data.backends import BACKENDS, resolve_device
from raft_data.cli_common import user_errors
from raft_data.config import Config, load_config
from raft_data.generate import shard_seed
from raft_data.prompts import split_prompts
from raft_data.rewards import configured_reward


def evaluate(cfg: Config, model: str, n_prompts: int, output: Path | None = None) -> dict:
    """Mean reward of `model`'s samples (K = generate.n_samples) on the first `n_prompts` held-out prompts."""
    _, heldout = split_prompts(cfg.prompts)
    if heldout.num_rows == 0:
        raise artifacts.StageError(f"{cfg.prompts.path}: the held-out split is empty (prompts.heldout_fraction)")
    prompts = heldout.slice(0, n_prompts)
    sample = BACKENDS[cfg.generate.backend](model, cfg.model, cfg.generate)
    # the same seed for every model, so that two models are compared on equal terms
    completions = sample(prompts["prompt"].to_pylist(), shard_seed(cfg.experiment.seed, -1, 0))
    rows: dict[str, list] = {name: [] for name in schemas.HELDOUT_COMPLETIONS.names}
    for pid, prompt, comps in zip(
        prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist(), completions, strict=True
    ):
        for k, c in enumerate(comps):
            rows["prompt_id"].append(pid)
            rows["sample_idx"].append(k)
            rows["prompt"].append(prompt)
            rows["completion"].append(c.text)
    rows["reward"] = configured_reward(cfg.score, resolve_device(cfg.score.device))(rows["prompt"], rows["completion"])
    rows["model"] = [model] * len(rows["reward"])
    table = pa.table(rows, schema=schemas.HELDOUT_COMPLETIONS)
    if output is not None:
        artifacts.write_parquet(table, output, schemas.HELDOUT_COMPLETIONS)
    return {
        "model": model,
        "prompts": prompts.num_rows,
        "samples": table.num_rows,
        "mean_reward": statistics.fmean(rows["reward"]),
        "reward": cfg.score.reward,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mean reward of a model's samples on the held-out prompts.")
    parser.add_argument("--config", default="pipelines/imdb_positive.yaml")
    parser.add_argument("--model", required=True, help="a model folder")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--output", default=None, help="write the scored samples to this .parquet file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = evaluate(cfg, args.model, args.n_prompts, Path(args.output) if args.output else None)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"evaluate: {args.model}: mean reward {result['mean_reward']:.4f} over {result['samples']} samples "
        f"of {result['prompts']} held-out prompts"
    )
    if args.output:
        artifacts.write_json(result, Path(args.output).with_suffix(".json"))


if __name__ == "__main__":
    main()
