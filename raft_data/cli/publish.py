"""`raft-data track | export | export-model`: an experiment where practitioners already look, its rounds in an
experiment tracker, its selected sets as a `datasets` DatasetDict with a dataset card, a round's model with a model
card; `--push-to-hub` uploads either to the Hugging Face Hub.

Run as:
    raft-data track --config pipelines/imdb_positive.yaml tracking.report_to=[tensorboard]
    raft-data export --config pipelines/imdb_positive.yaml --all-rounds --out runs/imdb_positive_dataset
    raft-data export --config pipelines/imdb_positive.yaml --round 2 --out DIR --push-to-hub user/imdb-raft
    raft-data export-model --config pipelines/imdb_positive.yaml --round 2 --out runs/imdb_positive_model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raft_data.cli.common import Parser, add_config_args, run_stage
from raft_data.config import Config
from raft_data.errors import ConfigError
from raft_data.stages.track import track
from raft_data.storage.tracking import tracking_dir
from raft_data.tools.export import export_dataset, export_model, push_to_hub


def track_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data track",
        description="Send an experiment's finished rounds (eval metrics, selection statistics, stage costs, kept and "
        "rejected samples) to the trackers of tracking.report_to, one step per round. Rounds already sent as they are "
        "now are skipped, so it can run any number of times.",
    )
    add_config_args(parser, round_arg=False)
    parser.add_argument(
        "--round",
        dest="rounds",
        metavar="N",
        type=int,
        nargs="+",
        default=None,
        help="only these rounds (default: all finished)",
    )
    parser.add_argument(
        "--force", action="store_true", help="send the rounds again even if they were sent as they are"
    )
    parser.add_argument(
        "--if-configured", action="store_true", help="do nothing when tracking.report_to is empty (for make targets)"
    )

    def run(cfg: Config, args: argparse.Namespace) -> None:
        if not cfg.tracking.report_to and args.if_configured:
            return
        if not cfg.tracking.report_to:
            raise ConfigError(
                "tracking.report_to is empty: name the trackers, e.g. tracking.report_to=[tensorboard,mlflow] "
                "(trackio, tensorboard, wandb, mlflow)"
            )
        sent = track(cfg, args.rounds, args.force)
        for tracker, what in sent.items():
            rounds = what["rounds"]
            said = f"rounds {', '.join(map(str, rounds))} in {what['seconds']:.2f}s" if rounds else "nothing new"
            print(f"{tracker}: {said} -> {tracking_dir(cfg) / tracker}")

    run_stage(parser, argv, run)


def _hub_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (refused if it holds files)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="then upload the folder to this Hub repository (owner/name)",
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")


def export_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data export",
        description="Write the selected sets of one round or of all rounds as a `datasets` DatasetDict (one split "
        "per round, round_0, round_1, ..., or one merged `train` split with a selection_round column) with a dataset "
        "card, and optionally upload it to the Hugging Face Hub. `--model` exports the round's model instead.",
    )
    add_config_args(parser, round_arg=False)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--round", dest="only_round", metavar="N", type=int, default=None, help="export this round only"
    )
    which.add_argument("--all-rounds", action="store_true", help="export every round with a finished selection")
    parser.add_argument("--merged", action="store_true", help="one `train` split with a selection_round column")
    parser.add_argument("--model", action="store_true", help="export the round's model folder with a model card")
    _hub_args(parser)

    def run(cfg: Config, args: argparse.Namespace) -> None:
        if args.only_round is not None and args.only_round < 0:
            parser.error(f"--round={args.only_round} is invalid: expected >= 0")
        if args.model:
            if args.only_round is None:
                parser.error("--model needs --round N")
            path, repo_type = export_model(cfg, args.only_round, args.out, args.force), "model"
        else:
            if args.only_round is None and not args.all_rounds:
                parser.error("name the rounds: --round N or --all-rounds")
            rounds = None if args.all_rounds else [args.only_round]
            path, repo_type = export_dataset(cfg, args.out, rounds, args.merged, args.force), "dataset"
        print(f"export: {path.resolve()}")
        if args.push_to_hub:
            print(f"pushed: {push_to_hub(path, args.push_to_hub, repo_type, args.private)}")

    run_stage(parser, argv, run)


def export_model_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-data export-model",
        description="Copy a round's model folder (checked against its manifest) with a model card, and optionally "
        "upload it to the Hugging Face Hub.",
    )
    add_config_args(parser)
    _hub_args(parser)

    def run(cfg: Config, args: argparse.Namespace) -> None:
        path = export_model(cfg, args.round, args.out, args.force)
        print(f"export: {path.resolve()}")
        if args.push_to_hub:
            print(f"pushed: {push_to_hub(path, args.push_to_hub, 'model', args.private)}")

    run_stage(parser, argv, run)
