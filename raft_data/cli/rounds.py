"""`raft-data rounds | report | sweep`: many rounds in one command, the HTML report of an experiment, and a sweep of
its variants with the reward-drift frontier.

Run as:
    raft-data rounds 3 --config pipelines/imdb_positive.yaml
    raft-data report --config pipelines/imdb_positive.yaml
    raft-data report --config pipelines/imdb_positive.yaml --compare imdb_positive_k1 imdb_positive_k2 \\
        --out runs/ablation_k
    raft-data sweep --config pipelines/imdb_positive.yaml --grid pipelines/sweeps/imdb_small.yaml
    raft-data preview --config pipelines/imdb_positive.yaml --prompts 4 --samples 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raft_data import storage
from raft_data.cli.common import Parser, add_config_args, run_stage
from raft_data.config import Config
from raft_data.report import collect, compare_experiments, metrics_markdown, write_report
from raft_data.rounds import run_rounds
from raft_data.tools.preview import preview
from raft_data.tools.sweep import load_grid, run_sweep, variant_configs, write_frontier
from raft_sft.train import train


def rounds_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data rounds",
        description="Run generate, score, select, sft and eval for rounds 0..N-1, resuming where a run stopped.",
    )
    parser.add_argument("n_rounds", type=int, metavar="N", help="number of rounds (rounds 0..N-1)")
    add_config_args(parser, round_arg=False)

    def run(cfg: Config, args: argparse.Namespace) -> None:
        if args.n_rounds < 1:
            parser.error(f"N={args.n_rounds} is invalid: expected >= 1")
        run_rounds(cfg, args.n_rounds, train)

    run_stage(parser, argv, run)


def report_command(argv: list[str] | None = None) -> None:
    parser = Parser(prog="raft-data report", description="Write an HTML report with plots of every evaluated round.")
    add_config_args(parser, round_arg=False)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <experiment>/report/)")
    parser.add_argument(
        "--compare", nargs="+", metavar="EXPERIMENT", default=None, help="compare these experiment names instead"
    )

    def run(cfg: Config, args: argparse.Namespace) -> None:
        if args.compare:
            out = args.out or storage.experiment_dir(cfg).parent / "compare"
            path = compare_experiments(cfg, args.compare, out)
            print((path.parent / "tables.md").read_text(encoding="utf-8"))
        else:
            path = write_report(cfg, args.out)
            print(metrics_markdown(collect(cfg)))
        print(f"report: {path.resolve()}")

    run_stage(parser, argv, run)


def sweep_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data sweep",
        description="Run named variants of an experiment (each its own experiment, resuming where it stopped), then "
        "write a frontier page: held-out reward against KL per token and against the perplexity ratio.",
    )
    add_config_args(parser, round_arg=False)
    parser.add_argument("--grid", type=Path, required=True, help="YAML file: n_rounds and variants (name: overrides)")
    parser.add_argument("--out", type=Path, default=None, help="page folder (default: <output_root>/<name>_sweep/)")
    parser.add_argument("--no-run", action="store_true", help="only write the page from the rounds already finished")

    def run(cfg: Config, args: argparse.Namespace) -> None:
        grid = load_grid(args.grid)
        configs = variant_configs(args.config, args.overrides, grid)
        if not args.no_run:
            run_sweep(configs, grid.n_rounds, lambda variant, n: run_rounds(variant, n, train))
        out = args.out or storage.experiment_dir(cfg).parent / f"{cfg.experiment.name}_sweep"
        path = write_frontier(cfg.experiment.name, grid, configs, out)
        print((path.parent / "variants.md").read_text(encoding="utf-8"), end="")
        print(f"sweep: {path.resolve()}")

    run_stage(parser, argv, run)


def count(text: str) -> int:
    """An option that counts something: an integer in [1, 4096]."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected an integer in [1, 4096]")
    return value


def preview_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data preview",
        description="Run a whole round (generate, score, select, one SFT step, eval) on a few prompts and samples in "
        "a temporary folder, printing samples, rewards and what selection kept and why at each stage. The "
        "experiment's own rounds are never read or written. Config overrides apply as for every command.",
    )
    add_config_args(parser, round_arg=False)
    parser.add_argument(
        "--prompts", type=count, default=4, help="prompts of the round, b (default 4; in place of prompts.n_prompts)"
    )
    parser.add_argument(
        "--samples", type=count, default=2, help="samples per prompt, K (default 2; in place of generate.n_samples)"
    )
    parser.add_argument("--show", type=count, default=2, help="prompts whose samples are printed (default 2)")
    parser.add_argument("--max-new-tokens", type=count, default=None, help="tokens per sample (default: the config's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print where it is")

    def run(cfg: Config, args: argparse.Namespace) -> None:
        preview(cfg, train, args.prompts, args.samples, args.show, args.max_new_tokens, args.keep)

    run_stage(parser, argv, run)
