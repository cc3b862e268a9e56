"""The arguments every stage takes, and the one place that turns user errors into one-line messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from raft_data.config import ConfigError, load_config

DEFAULT_CONFIG = "pipelines/imdb_positive.yaml"


def add_stage_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--round", type=int, default=0, help="round index n, artifacts in round-NNNN/ (default: 0)")
    parser.add_argument(
        "--force", action="store_true", help="delete this stage's output for the round and build it again"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. generate.n_samples=8 prompts.n_prompts=64 sft.learning_rate=2e-5",
    )
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: printed as one line, exit status 2."""
    from raft_data.artifacts import StageError
    from raft_data.backends import BackendError, ModelLoadError
    from raft_data.prompts import DataError

    return ConfigError, StageError, DataError, ModelLoadError, BackendError


def run_round_tool(description: str, tool: Callable, argv: list[str] | None) -> None:
    """A look-only command over one round: `CONFIG [--round n] [section.key=value ...]`, then `tool(cfg, round)`;
    bad input is one line on stderr and exit status 2, as for the stages."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--round", type=int, default=0, help="round index (default: 0)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.round < 0:
        parser.error(f"--round={args.round} is invalid: expected >= 0")
    try:
        tool(load_config(args.config, args.overrides), args.round)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run_cli(
    parser: argparse.ArgumentParser,
    stage: Callable,
    argv: list[str] | None,
    stage_kwargs: Callable[[argparse.Namespace], dict] | None = None,
) -> None:
    """Parse, load the config and run `stage(cfg, round, force=..., **stage_kwargs(args))`."""
    args = parser.parse_args(argv)
    if args.round < 0:
        parser.error(f"--round={args.round} is invalid: expected >= 0")
    try:
        cfg = load_config(args.config, args.overrides)
        stage(cfg, args.round, force=args.force, **(stage_kwargs(args) if stage_kwargs else {}))
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
