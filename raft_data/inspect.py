"""Inspect: what a round holds and what selection did with it.

Run as:
    raft-data inspect --config pipelines/imdb_positive.yaml --round 0
    raft-data inspect --round 0 --examples 5 select.drop_duplicates=true

Prints the counts of each stage, reward quantiles of all samples, of the best of K per prompt and of the selected
rows, the rows each guard dropped, and for a few prompts the kept sample beside the rejected ones (with the guard
that dropped each, if any). Give the same select overrides that `raft-data select` was run with.
"""

from __future__ import annotations

import argparse
import sys

from raft_data import artifacts
from raft_data.cli_common import DEFAULT_CONFIG, user_errors
from raft_data.config import Config, load_config
from raft_data.select import round_connection, run_query, select_params, view_sql
from raft_data.status import round_status


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def stage_lines(cfg: Config, round_idx: int) -> list[str]:
    """The round's stages as `raft-data status` shows them, plus the selection strategy and what its guards dropped."""
    lines = round_status(cfg, round_idx)
    path = artifacts.round_dir(cfg, round_idx) / artifacts.STAGE_FOLDERS["select"] / "manifest.json"
    if path.exists():
        m = artifacts.read_json(path)
        dropped = ", ".join(f"{k} {v}" for k, v in (m.get("dropped") or {}).items()) or "no guard enabled"
        lines.append(f"  {'':10s} strategy {m['config']['select']['strategy']}; dropped before ranking: {dropped}")
    return lines


def quantile_lines(table) -> list[str]:
    names = table.column_names
    lines = ["reward quantiles:", "  " + f"{names[0]:12s}" + "".join(f"{n:>9s}" for n in names[1:])]
    for row in table.to_pylist():
        cells = [f"{row['n']:9d}"] + [f"{row[n]:9.4f}" if row[n] is not None else f"{'-':>9s}" for n in names[2:]]
        lines.append("  " + f"{row['rows']:12s}" + "".join(cells))
    return lines


def example_lines(table, width: int = 80) -> list[str]:
    lines = []
    current = None
    for row in table.to_pylist():
        if row["prompt_id"] != current:
            current = row["prompt_id"]
            lines.append(f"prompt {current}: {shorten(row['prompt'], width)!r}")
        mark = "kept" if row["kept"] else (f"drop:{row['dropped_by']}" if row["dropped_by"] else "-")
        where = f"r{row['round']}/s{row['sample_idx']}"
        lines.append(f"  {mark:15s} {row['reward']:8.4f}  {where:8s} {shorten(row['completion'], width)!r}")
    return lines


def inspect(cfg: Config, round_idx: int, n_examples: int = 3) -> str:
    """The report as text."""
    lines = stage_lines(cfg, round_idx)
    con = round_connection(cfg, round_idx)
    params = select_params(cfg, round_idx) | {"n_prompts": n_examples}
    lines += ["", *quantile_lines(run_query(con, view_sql("quantiles"), params, "quantiles.sql"))]
    if n_examples > 0:
        lines += ["", f"first {n_examples} prompts, kept sample first:"]
        lines += example_lines(run_query(con, view_sql("examples"), params, "examples.sql"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="raft-data inspect",
        description="Show a round's counts, reward quantiles, guard drops, and kept vs rejected samples.",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--round", type=int, default=0, help="round index (default: 0)")
    parser.add_argument("--examples", type=int, default=3, help="prompts to show sample by sample (default: 3)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    if args.round < 0 or args.examples < 0:
        parser.error("--round and --examples must be >= 0")
    try:
        print(inspect(load_config(args.config, args.overrides), args.round, args.examples))
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
