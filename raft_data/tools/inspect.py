"""Inspect: what a round holds and what selection did with it.

Run as:
    raft-data inspect --config pipelines/imdb_positive.yaml --round 0
    raft-data inspect --round 0 --examples 5 select.drop_duplicates=true

Prints the counts of each stage, reward quantiles of all samples, of the best of K per prompt and of the selected
rows, the rows each guard dropped, and for a few prompts the kept sample beside the rejected ones (with the guard
that dropped each, if any). Give the same select overrides that `raft-data select` was run with.
"""

from __future__ import annotations

from raft_data import storage
from raft_data.config import Config
from raft_data.data.decontam import guard_texts
from raft_data.selection.engine import round_connection, run_query, select_params, view_sql
from raft_data.tools.status import round_status


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def stage_lines(cfg: Config, round_idx: int) -> list[str]:
    """The round's stages as `raft-data status` shows them, plus the selection strategy and what its guards dropped."""
    lines = round_status(cfg, round_idx)
    path = storage.round_dir(cfg, round_idx) / storage.STAGE_FOLDERS["select"] / "manifest.json"
    if path.exists():
        m = storage.read_json(path)
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
    con = round_connection(cfg, round_idx, guard_texts(cfg))
    params = select_params(cfg, round_idx) | {"n_prompts": n_examples}
    lines += ["", *quantile_lines(run_query(con, view_sql("quantiles"), params, "quantiles.sql"))]
    if n_examples > 0:
        lines += ["", f"first {n_examples} prompts, kept sample first:"]
        shown = run_query(con, view_sql("example_prompts"), params, "example_prompts.sql")["prompt_id"].to_pylist()
        params["prompt_ids"] = shown
        lines += example_lines(run_query(con, view_sql("examples"), params, "examples.sql"))
    return "\n".join(lines)
