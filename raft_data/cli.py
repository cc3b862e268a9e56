"""`raft-data`: the data-building stages of a RAFT round, one subcommand each.

Run as:
    raft-data generate --config pipelines/imdb_positive.yaml --round 0
    raft-data score    --config pipelines/imdb_positive.yaml --round 0
    raft-data select   --config pipelines/imdb_positive.yaml --round 0
    raft-data status   --config pipelines/imdb_positive.yaml --round 0
    raft-data inspect  --config pipelines/imdb_positive.yaml --round 0
    raft-data sql "select count(*) from selected" --config pipelines/imdb_positive.yaml --round 0
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("raft_data.generate", "sample K completions per prompt into samples/ shards"),
    "score": ("raft_data.score", "score every sample with the reward into scores/ shards"),
    "select": ("raft_data.select", "rank with a DuckDB query into selected/ (best per prompt, or another strategy)"),
    "status": ("raft_data.status", "show which stages of a round are done, with counts and rewards"),
    "inspect": ("raft_data.inspect", "counts, reward quantiles, guard drops, kept vs rejected samples of a round"),
    "sql": ("raft_data.query", "run a DuckDB select over a round's views (samples, scores, selected, ...)"),
}

USAGE = """usage: raft-data COMMAND [--config CONFIG] [--round N] [--force] [section.key=value ...]

Build the data of a RAFT round as Parquet artifacts in runs/<experiment>/round-NNNN/.
Then fine-tune on it with `raft-sft train`.

Commands:
{commands}

Run `raft-data COMMAND --help` for a command's options. Example:
  raft-data generate --config pipelines/imdb_positive.yaml --round 0 generate.n_samples=8
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        commands = "\n".join(f"  {name:9s} {help_}" for name, (_, help_) in COMMANDS.items())
        print(USAGE.format(commands=commands), end="")
        return
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands are {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
