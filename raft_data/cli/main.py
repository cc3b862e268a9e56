"""`raft-data`: the data-building stages of a RAFT round and the tools around them, one subcommand each.

Run as:
    raft-data generate --config pipelines/imdb_positive.yaml --round 0
    raft-data rounds 3 --config pipelines/imdb_positive.yaml
    raft-data --help
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from raft_data.cli import publish, rounds, stages, tools
from raft_data.cli.common import fail, take_debug_flag

Command = Callable[[list[str] | None], None]

# name -> (command, one line of help); the order is the order of `raft-data --help`
COMMANDS: dict[str, tuple[Command, str]] = {
    "preview": (rounds.preview_command, "a whole round on a few prompts in a temporary folder, showing each stage"),
    "generate": (stages.generate_command, "sample K completions per prompt into samples/ shards"),
    "score": (stages.score_command, "score every sample with the reward into scores/ shards"),
    "rescore": (stages.rescore_command, "score a round's samples again with another reward into rescores/NAME/"),
    "compare-scores": (tools.compare_scores_command, "agreement, flips and selection changes of two scorings"),
    "select": (
        stages.select_command,
        "rank with a DuckDB query into selected/ (best per prompt or another strategy)",
    ),
    "eval": (stages.eval_command, "evaluate a round's model on held-out prompts into eval/ (round 0: base too)"),
    "rounds": (rounds.rounds_command, "run generate, score, select, sft and eval for N rounds, resuming"),
    "report": (rounds.report_command, "write an HTML report with plots of every round"),
    "track": (publish.track_command, "send finished rounds to experiment trackers (tracking.report_to), once each"),
    "export": (publish.export_command, "selected sets as a datasets DatasetDict with a dataset card (--push-to-hub)"),
    "export-model": (publish.export_model_command, "a round's model folder with a model card (--push-to-hub)"),
    "sweep": (rounds.sweep_command, "run named variants of an experiment, then plot reward against drift"),
    "status": (tools.status_command, "show which stages of a round are done, with counts and rewards"),
    "inspect": (tools.inspect_command, "counts, reward quantiles, guard drops, kept vs rejected samples of a round"),
    "sql": (tools.sql_command, "run a DuckDB select over a round's views (samples, scores, selected, ...)"),
    "config": (tools.config_command, "print the resolved config (defaults < YAML < overrides)"),
    "prompts": (tools.prompts_command, "print the prompts a round draws"),
    "sources": (tools.sources_command, "count each extra source's candidates for a round's prompts"),
    "chat": (tools.chat_command, "print a round's prompts as the model sees them (chat template, length rule)"),
    "logprob": (tools.logprob_command, "print log p(completion | prompt) under a model folder"),
    "reward": (tools.reward_command, "score one prompt and completion with a reward model folder"),
    "heldout": (tools.heldout_command, "mean reward of any model folder's samples on the held-out prompts"),
    "reward-model": (tools.reward_model_command, "fine-tune the packaged MiniLM into a reward model on human ratings"),
    "arithmetic": (tools.arithmetic_command, "write seeded arithmetic problems with checkable answers (jsonl)"),
    "humaneval": (tools.humaneval_command, "write the HumanEval problems with their tests (jsonl)"),
    "gym": (tools.gym_command, "write a reasoning-gym task family's problems from disjoint train/held-out seeds"),
    "mix": (tools.mix_command, "write the prompts of several experiments as one set of tasks, each with its verifier"),
    "assets": (tools.assets_command, "fetch the default model and prompts from PyPI into assets/ (make setup)"),
}

USAGE = """usage: raft-data COMMAND [--config CONFIG] [--round N] [--force] [section.key=value ...]

Build the data of a RAFT round as Parquet artifacts in runs/<experiment>/round-NNNN/.
Then fine-tune on it with `raft-sft train`.

Commands:
{commands}

Run `raft-data COMMAND --help` for a command's options; `--debug` shows the traceback of an error. Example:
  raft-data generate --config pipelines/imdb_positive.yaml --round 0 generate.n_samples=8
"""


def main(argv: list[str] | None = None) -> None:
    argv = take_debug_flag(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        commands = "\n".join(f"  {name:12s} {help_}" for name, (_, help_) in COMMANDS.items())
        print(USAGE.format(commands=commands), end="")
        return
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}; commands are {', '.join(COMMANDS)}")
    COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    main()
