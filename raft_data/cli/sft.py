"""`raft-sft`: the SFT stage of a round, distillation into a student, and building a layer-dropped student.

Run as:
    raft-sft train --config pipelines/imdb_positive.yaml --round 0 sft.learning_rate=2e-5
    raft-sft train --config pipelines/imdb_positive.yaml --data 'runs/imdb_positive/round-*' \\
        --model runs/distill/student-init --output runs/distill/student
    raft-sft student --teacher assets/smollm2-135m-instruct --layers 6 --output runs/distill/student-init
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raft_data.cli.common import Parser, add_stage_args, fail, guarded, parse, run_stage, take_debug_flag
from raft_data.config import Config
from raft_sft.distill import distill
from raft_sft.student import make_student
from raft_sft.train import train

USAGE = """usage: raft-sft train [--config CONFIG] [--round N] [--force] [section.key=value ...]
       raft-sft train --data PATH [PATH ...] --model STUDENT --output DIR [--config CONFIG] [...]
       raft-sft student --teacher DIR --layers N --output DIR

Commands:
  train     fine-tune a round's starting model on its selected samples (TRL SFTTrainer),
            or distil any rounds' selected data into a student model (--data/--model/--output)
  student   build a smaller student from a teacher: the same tokenizer, every k-th decoder layer

Run `raft-sft train --help` for the options.
"""


def train_command(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="raft-sft train",
        description="Fine-tune the round's starting model on its selected samples with TRL's SFTTrainer; "
        "with --data, --model and --output, distil any rounds' selected data into any student model instead.",
    )
    add_stage_args(parser)
    group = parser.add_argument_group("distillation (instead of --round)")
    group.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="selected/ folders, round folders or globs, across experiments, e.g. 'runs/imdb_positive/round-*'",
    )
    group.add_argument("--model", help="the student: a model folder")
    group.add_argument("--output", help="the student's output folder")
    parser.add_argument(
        "--log-examples",
        action="store_true",
        help="write the example ids each process trained on to examples/rank-NNNNN.json in the output",
    )

    def run(cfg: Config, args: argparse.Namespace) -> dict:
        distilling = args.data is not None or args.model is not None or args.output is not None
        if not distilling:
            return train(cfg, args.round, args.force, args.log_examples)
        if not (args.data and args.model and args.output):
            parser.error("distillation needs all of --data, --model and --output")
        return distill(cfg, args.data, args.model, Path(args.output), args.force, args.log_examples)

    run_stage(parser, argv, run)


def student_command(argv: list[str] | None = None) -> None:
    parser = Parser(prog="raft-sft student", description="Build a layer-dropped student model from a teacher folder.")
    parser.add_argument("--teacher", default="assets/smollm2-135m-instruct")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers the student keeps")
    parser.add_argument("--output", required=True)
    args = parse(parser, argv)
    info = guarded(make_student, args.teacher, Path(args.output), args.layers)
    print(
        f"student: {info['parameters'] / 1e6:.1f}M parameters (teacher {info['teacher_parameters'] / 1e6:.1f}M), "
        f"teacher layers {info['layers']} -> {args.output}"
    )


COMMANDS = {"train": train_command, "student": student_command}


def main(argv: list[str] | None = None) -> None:
    """The `raft-sft` console script."""
    argv = take_debug_flag(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}; commands are {', '.join(COMMANDS)}")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
