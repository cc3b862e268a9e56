"""What every command shares: the stage arguments (`--config`, `--round`, `--force`, `section.key=value`), and the
one place that turns user errors into one-line messages with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from raft_data.config import Config, load_config
from raft_data.errors import UserError, one_line
from raft_data.models.checks import check_model_limits
from raft_data.storage.files import disk_failure

DEFAULT_CONFIG = "pipelines/imdb_positive.yaml"
# `--debug` anywhere on the command line (or RAFT_DEBUG=1): user errors keep their traceback and its causes
DEBUG = {"on": os.environ.get("RAFT_DEBUG", "") not in ("", "0")}


def take_debug_flag(argv: list[str]) -> list[str]:
    """`argv` without `--debug`, which turns tracebacks on for this process."""
    if "--debug" in argv:
        DEBUG["on"] = True
    return [a for a in argv if a != "--debug"]


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit status 2, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def add_config_args(parser: argparse.ArgumentParser, round_arg: bool = True) -> argparse.ArgumentParser:
    """`--config`, `--round` (optional) and the `section.key=value` overrides."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    if round_arg:
        parser.add_argument("--round", type=int, default=0, help="round index n, artifacts in round-NNNN/ (default 0)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. generate.n_samples=8 prompts.n_prompts=64 sft.learning_rate=2e-5",
    )
    return parser


def add_stage_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of a stage: the config ones and `--force`."""
    add_config_args(parser)
    parser.add_argument(
        "--force", action="store_true", help="delete this stage's output for the round and build it again"
    )
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse options and positionals in any order (overrides may stand on both sides of an option)."""
    args = parser.parse_intermixed_args(argv)
    if getattr(args, "round", 0) < 0:
        parser.error(f"--round={args.round} is invalid: expected >= 0")
    return args


def fail(message: str) -> None:
    """One line on stderr, exit status 2."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn`; a UserError becomes one line on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        if DEBUG["on"]:
            raise
        fail(str(e))
    except OSError as e:  # a write the disk refused deep inside a library (a model save, say)
        failure = disk_failure(e)
        if failure is None or DEBUG["on"]:
            raise
        fail(str(failure))


def run_stage(
    parser: argparse.ArgumentParser, argv: list[str] | None, call: Callable[[Config, argparse.Namespace], Any]
) -> Any:
    """Parse `argv`, load the config (defaults < YAML < overrides) and run `call(cfg, args)`, user errors as one
    line and exit status 2."""
    args = parse(parser, argv)

    def run() -> Any:
        cfg = load_config(args.config, args.overrides)
        check_model_limits(cfg, cfg.model.name_or_path)  # what the model cannot take, refused before anything loads
        return call(cfg, args)

    return guarded(run)
