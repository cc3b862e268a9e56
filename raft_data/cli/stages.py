"""`raft-data generate | score | select | eval`: one stage of one round.

Run as:
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 generate.n_samples=8
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 --shard 2 --num-shards 4   # one shard
    raft-data generate --config pipelines/imdb_positive.yaml --round 0 --top-up generate.max_new_tokens=96
    raft-data score    --config pipelines/imdb_positive.yaml --round 0
    raft-data score    --config pipelines/imdb_positive.yaml --round 0 executor.kind=slurm     # an array job
    raft-data select   --config pipelines/imdb_positive.yaml --round 0 select.strategy=top_n_per_prompt select.n=2
    raft-data eval     --config pipelines/imdb_positive.yaml --round 0
"""

from __future__ import annotations

import argparse

from raft_data import storage
from raft_data.cli.common import Parser, add_stage_args, run_stage
from raft_data.selection.engine import strategies
from raft_data.stages.evaluate import evaluate
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.stages.top_up import top_up
from raft_data.tools.compare_scores import compare_scores, format_comparison


def add_shard_args(parser: argparse.ArgumentParser, count: str) -> argparse.ArgumentParser:
    """`--shard i --num-shards n`: one process runs one shard (a Slurm array task, say); the last to finish, or a
    plain rerun, writes the manifest."""
    parser.add_argument(
        "--shard", type=int, default=None, help="run only this shard (0-based), e.g. a Slurm array task's index"
    )
    parser.add_argument("--num-shards", type=int, default=None, help=f"the stage's shard count; must equal {count}")
    return parser


def add_retry_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="redo only the rows that failed (their `error` column is set), finished shards included",
    )
    return parser


def generate_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data generate",
        description="Sample K completions per prompt for one round and write them as Parquet shards. "
        "executor.kind=ray|slurm runs the shards there; ray_data sends their rows through Ray Data replicas.",
    )
    add_retry_arg(add_shard_args(add_stage_args(parser), "generate.n_shards"))
    parser.add_argument(
        "--top-up",
        action="store_true",
        help="on a finished stage, redo only what higher generate.max_new_tokens or n_samples, or changed "
        "generate.stop, need (truncated or failed samples, new sample indices) as a new pass; the other rows are kept",
    )

    def run(cfg, a):
        if a.top_up:
            if a.force or a.retry_failed or a.shard is not None:
                parser.error("--top-up runs alone, in one process: drop --force, --retry-failed and --shard")
            return top_up(cfg, a.round)
        return generate(
            cfg, a.round, force=a.force, shard=a.shard, num_shards=a.num_shards, retry_failed=a.retry_failed
        )

    run_stage(parser, argv, run)


def score_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data score",
        description="Score every sample of one round with the configured reward, one scores shard per samples "
        "shard. executor.kind=ray|slurm runs the shards there; ray_data sends their rows through Ray Data replicas "
        "that hold the reward model.",
    )
    add_retry_arg(add_shard_args(add_stage_args(parser), "the number of samples shards"))
    run_stage(
        parser,
        argv,
        lambda cfg, a: score(
            cfg, a.round, force=a.force, shard=a.shard, num_shards=a.num_shards, retry_failed=a.retry_failed
        ),
    )


def rescore_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data rescore",
        description="Score a round's stored samples again with another reward (the score.* overrides given here) "
        "into round-NNNN/rescores/NAME/, with its own manifest; scores/ and everything built on it stay as they are. "
        "Runs in this process. When scores/ is finished, prints how the two agree (see compare-scores).",
        epilog="example: raft-data rescore --config pipelines/imdb_positive.yaml --round 0 --into lexicon "
        "score.reward=raft_data.rewards.builtin:vader_completion",
    )
    add_retry_arg(add_stage_args(parser))
    parser.add_argument("--into", required=True, help="the rescore's name: its folder is round-NNNN/rescores/NAME/")

    def run(cfg, args) -> None:
        manifest = score(cfg, args.round, force=args.force, retry_failed=args.retry_failed, into=args.into)
        scores = storage.round_dir(cfg, args.round) / storage.STAGE_FOLDERS["score"]
        if manifest is not None and (scores / "manifest.json").exists():
            print(format_comparison(compare_scores(cfg, args.round, "scores", f"rescores/{args.into}")))

    run_stage(parser, argv, run)


def select_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data select",
        description="Rank a round's scored samples with a DuckDB query and write the selected set. "
        f"Strategies (select.strategy): {', '.join(strategies())}.",
    )
    run_stage(add_stage_args(parser), argv, lambda cfg, a: select(cfg, a.round, force=a.force))


def eval_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data eval",
        description="Evaluate a round's fine-tuned model on held-out prompts (round 0 also evaluates the base model), "
        "in eval.n_shards shards. executor.kind=ray|slurm runs the shards there.",
    )
    add_shard_args(add_stage_args(parser), "eval.n_shards")
    run_stage(
        parser, argv, lambda cfg, a: evaluate(cfg, a.round, force=a.force, shard=a.shard, num_shards=a.num_shards)
    )
