"""`raft-data sql`: run one DuckDB select query over a round and print the result.

Run as:
    raft-data sql "select prompt_id, max(reward) from scores group by all order by 2 desc limit 5" --round 0
    raft-data sql "select * from selected" --round 0 --csv > selected.csv

Views: samples, scores (every column of the shards, plus round), scored (samples joined with scores, with
rank_key), guarded (scored with dropped_by, the guard that drops each row), candidates (what the strategy ranks),
selected (selected/), prompts (prompts.parquet). Only a single select statement is accepted: the round's files
are never written. Parameters $round, $n, $alpha, $tau are bound from the config.
"""

from __future__ import annotations

import pyarrow as pa

from raft_data.config import Config
from raft_data.data.decontam import guard_texts
from raft_data.selection.engine import round_connection, run_query, select_params


def format_table(table: pa.Table, max_rows: int, width: int = 60) -> str:
    """An aligned text table of the first max_rows rows; long cells are cut to `width` characters."""

    def cell(value: object) -> str:
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 3] + "..."

    rows = [[cell(v) for v in row.values()] for row in table.slice(0, max_rows).to_pylist()]
    names = table.column_names
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    shown = f"{min(max_rows, table.num_rows)} of {table.num_rows} rows"
    lines.append(f"({shown})")
    return "\n".join(lines)


def run_sql(cfg: Config, round_idx: int, query: str) -> pa.Table:
    """The query's result over round `round_idx`'s views."""
    con = round_connection(cfg, round_idx, guard_texts(cfg))
    return run_query(con, query, select_params(cfg, round_idx), "query")
