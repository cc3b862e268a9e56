"""The selection engine: DuckDB views over a round's Parquet shards, the strategy queries of `sql/`, their bound
parameters, the guards, and the data tests a selection must pass before it is published.

How a selection is built, all in DuckDB over the Parquet shards (nothing is loaded into Python first):
  1. `sql/views/settings.sql` binds the select config as variables ($name parameters, never pasted into SQL);
  2. `sql/views/pool.sql` defines the read-only views samples, scores and scored over the pool: this round, or
     for `cumulative` this round and every earlier one;
  3. `sql/views/guards.sql` marks the rows each enabled guard drops (view guarded) and keeps the rest;
  3b. with `decontam.drop_contaminated` / `drop_near_duplicates` on, `sql/decontam/guards.sql` adds the guards
     contaminated (an n-gram shared with an evaluation text) and near_duplicate (word-shingle Jaccard);
  4. the user's `select.where` / `select.qualify` clauses, if any, filter those into the view candidates;
  5. the strategy's query (`sql/<strategy>.sql`, or `select.sql_file` with strategy custom) ranks candidates.
The result is checked like a data test (`sql/views/checks.sql`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import ConfigError, DataError
from raft_data.storage import schemas

SQL_DIR = Path(__file__).parent / "sql"
VIEWS_DIR = SQL_DIR / "views"
METRICS_DIR = SQL_DIR / "metrics"
DECONTAM_DIR = SQL_DIR / "decontam"

# Strategies that keep at most one sample per prompt, and exactly one for every prompt with a candidate.
ONE_PER_PROMPT = {"best_per_prompt", "random_per_prompt", "cumulative"}
# Strategies whose pool is every round of the experiment up to this one, not just this round.
ALL_ROUNDS = {"cumulative"}
# Guard config fields and the name each writes in `dropped_by`, in the order guards.sql applies them.
GUARDS = {
    "drop_truncated": "truncated",
    "drop_empty": "empty",
    "drop_duplicates": "duplicate",
    "drop_constant": "constant",
    "min_margin": "margin",
    "pass_band": "pass_band",
}
# decontam config fields and the names their guards write in `dropped_by` (decontam/guards.sql), after GUARDS
DECONTAM_GUARDS = {"drop_contaminated": "contaminated", "drop_near_duplicates": "near_duplicate"}
USER_FILTER = "where/qualify"  # how rows dropped by the user's clauses are counted
NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


# ---------------------------------------------------------------------------------------------------------------------
# SQL files and parameters


def strategies() -> list[str]:
    return [*sorted(p.stem for p in SQL_DIR.glob("*.sql")), "custom"]


def strategy_sql(cfg: Config) -> str:
    """The text of the configured strategy's query (the user's file for strategy custom)."""
    name = cfg.select.strategy
    if name == "custom":
        path = Path(cfg.select.sql_file or "")
        if not path.is_file():
            raise ConfigError(f"select.sql_file={cfg.select.sql_file!r} is not a file")
        return path.read_text(encoding="utf-8")
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise ConfigError(f"select.strategy={name!r} is unknown: choose from {', '.join(strategies())}")
    return path.read_text(encoding="utf-8")


def view_sql(name: str) -> str:
    return (VIEWS_DIR / f"{name}.sql").read_text(encoding="utf-8")


def select_params(cfg: Config, round_idx: int) -> dict[str, Any]:
    """Every value a selection query may bind as `$name`."""
    s = cfg.select
    return {
        "round": round_idx,
        "n": s.n,
        "alpha": s.alpha if s.alpha is not None else 1.0 / cfg.generate.n_samples,
        "tau": s.tau,
        "rank_by": s.rank_by,
        "pooled": s.strategy in ALL_ROUNDS,
        "drop_truncated": s.drop_truncated,
        "drop_empty": s.drop_empty,
        "drop_duplicates": s.drop_duplicates,
        "drop_constant": s.drop_constant,
        "min_margin": s.min_margin,
        "min_pass_rate": s.min_pass_rate,
        "max_pass_rate": s.max_pass_rate,
        "pair_margin": s.pair_margin,
    }


def run_script(con: duckdb.DuckDBPyConnection, text: str, params: dict[str, Any], where: str) -> None:
    """Run each statement of a .sql file, binding the $names it uses from `params`."""
    for statement in duckdb.extract_statements(text):
        missing = sorted(statement.named_parameters - set(params))
        if missing:
            raise ConfigError(f"{where}: unknown parameter ${missing[0]}; parameters are ${', $'.join(params)}")
        con.execute(statement, {k: params[k] for k in statement.named_parameters})


def run_query(con: duckdb.DuckDBPyConnection, text: str, params: dict[str, Any], where: str) -> pa.Table:
    """Run one read-only query (a single select statement) with its $names bound; the result as an Arrow table."""
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ConfigError(f"{where}: expected one select query, got {len(statements)} statements")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise ConfigError(f"{where}: expected one select query, got a {statements[0].type.name} statement")
    statement = statements[0]
    missing = sorted(statement.named_parameters - set(params))
    if missing:
        raise ConfigError(f"{where}: unknown parameter ${missing[0]}; parameters are ${', $'.join(params)}")
    try:
        return con.sql(statement.query, params={k: params[k] for k in statement.named_parameters}).to_arrow_table()
    except duckdb.Error as e:
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> tuple:
    """One row of a query. fetchall, not fetchone: DuckDB keeps a half-read result open and blocks the connection."""
    return con.execute(sql, params or {}).fetchall()[0]


# ---------------------------------------------------------------------------------------------------------------------
# The pool of rounds and the views over it


def pool_rounds(cfg: Config, round_idx: int) -> list[int]:
    return list(range(round_idx + 1)) if cfg.select.strategy in ALL_ROUNDS else [round_idx]


def pool_manifests(cfg: Config, rounds: list[int]) -> tuple[dict[int, tuple[dict, dict]], dict[str, dict]]:
    """Each pool round's (samples manifest, scores manifest), their files checked against them and neither stale
    (a missing or stale one names the command that makes it); and the references the selection records to them."""
    manifests, refs = {}, {}
    for r in rounds:
        samples, samples_ref = storage.read_input(cfg, "generate", r)
        scores, scores_ref = storage.read_input(cfg, "score", r)
        manifests[r] = (samples, scores)
        prefix = "" if len(rounds) == 1 else f"round-{r:04d}/"
        refs[f"{prefix}samples"], refs[f"{prefix}scores"] = samples_ref, scores_ref
    return manifests, refs


def engine_settings(cfg: Config, threads: int | None = None) -> dict[str, Any]:
    """DuckDB's settings for a selection: threads, and `select.memory_limit` and `select.temp_directory`, beyond
    which a query spills its sorts, joins and aggregates to disk instead of holding them in memory."""
    settings: dict[str, Any] = {"threads": threads} if threads else {}
    if cfg.select.memory_limit is not None:
        settings["memory_limit"] = cfg.select.memory_limit.strip()
    if cfg.select.temp_directory is not None:
        settings["temp_directory"] = cfg.select.temp_directory
    return settings


def connect(cfg: Config, rounds: list[int], threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views raw_samples and raw_scores over the shards of `rounds`."""
    sample_files, score_files = [], []
    for r in rounds:
        rdir = storage.round_dir(cfg, r)
        sample_files += storage.shard_files(rdir / storage.STAGE_FOLDERS["generate"])
        score_files += storage.shard_files(rdir / storage.STAGE_FOLDERS["score"])
    con = duckdb.connect(config=engine_settings(cfg, threads))
    con.read_parquet([str(p) for p in sample_files], union_by_name=True).create_view("sample_files")
    # scores shards carry no round column: pool.sql reads it from the file name
    con.read_parquet([str(p) for p in score_files], filename=True, union_by_name=True).create_view("score_files")
    # Columns that only checkable-answer rounds have (and rounds written before they existed lack) read as null, so
    # one set of views serves every round.
    with_columns(
        con,
        "sample_files",
        "raw_samples",
        {"answer": "varchar", "level": "varchar", "task": "varchar", "error": "varchar"},
    )
    with_columns(con, "score_files", "raw_scores", {"correct": "double", "extracted": "varchar", "error": "varchar"})
    return con


def with_columns(con: duckdb.DuckDBPyConnection, source: str, view: str, columns: dict[str, str]) -> None:
    """`view`: every column of `source`, plus each of `columns` it lacks, as nulls of the given type."""
    have = {row[0] for row in con.execute(f"describe {source}").fetchall()}  # names of our own views, not input
    missing = ", ".join(f"null::{kind} as {name}" for name, kind in columns.items() if name not in have)
    con.execute(f"create or replace temp view {view} as select *{', ' + missing if missing else ''} from {source}")


def check_rank_by(con: duckdb.DuckDBPyConnection, rank_by: str) -> None:
    columns = {name: kind for name, kind, *_ in con.execute("describe raw_scores").fetchall() if name != "filename"}
    if rank_by not in columns:
        names = ", ".join(c for c in columns if c not in ("prompt_id", "sample_idx", "round"))
        raise ConfigError(f"select.rank_by={rank_by!r} is not a column of scores/: choose from {names}")
    if not columns[rank_by].startswith(NUMERIC_TYPES):
        raise ConfigError(f"select.rank_by={rank_by!r} is a {columns[rank_by]} column, not a number")


def candidates_view(where: str | None, qualify: str | None) -> str:
    """The view candidates: guarded_candidates filtered by the user's own clauses.

    The clauses are SQL by design (that is the feature); they are wrapped in parentheses and the whole must
    parse as one create-view statement, so they cannot end the statement and start another.
    """
    text = "create or replace temp view candidates as select * from guarded_candidates"
    if where:
        text += f"\nwhere ({where}\n)"
    if qualify:
        text += f"\nqualify ({qualify}\n)"
    return text


def decontam_sql(name: str) -> str:
    return (DECONTAM_DIR / f"{name}.sql").read_text(encoding="utf-8")


def decontam_params(cfg: Config, round_idx: int) -> dict[str, Any]:
    """What decontam/guards.sql and decontam/stats.sql bind as `$name`."""
    d = cfg.decontam
    return {
        "round": round_idx,
        "n": d.n,
        "shingle": d.shingle,
        "threshold": d.near_duplicate_threshold,
        "drop_contaminated": d.drop_contaminated,
        "drop_near_duplicates": d.drop_near_duplicates,
    }


def decontaminate(con: duckdb.DuckDBPyConnection, cfg: Config, round_idx: int, eval_texts: pa.Table | None) -> None:
    """The guards contaminated and near_duplicate over the view guarded (decontam/guards.sql). `eval_texts`
    (source, text) is what rows are checked against; it is needed only with decontam.drop_contaminated."""
    if cfg.decontam.drop_contaminated and eval_texts is None:
        raise ValueError("decontam.drop_contaminated needs the evaluation texts (raft_data.data.decontam.eval_texts)")
    if eval_texts is None:
        eval_texts = pa.table({"source": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    con.register("eval_texts", eval_texts)
    run_script(con, decontam_sql("guards"), decontam_params(cfg, round_idx), "decontam/guards.sql")


def decontam_stats(con: duckdb.DuckDBPyConnection, cfg: Config, round_idx: int) -> dict[str, int]:
    """Rows of the round checked, rows and prompts sharing an n-gram with an evaluation text, evaluation n-grams."""
    result = con.execute(decontam_sql("stats"), {"round": round_idx, "n": cfg.decontam.n})
    return dict(zip([d[0] for d in result.description], result.fetchall()[0], strict=True))


def define_views(
    con: duckdb.DuckDBPyConnection, cfg: Config, round_idx: int, eval_texts: pa.Table | None = None
) -> dict[str, Any]:
    """settings, pool, guards and candidates views on `con`; returns the bound parameters. `eval_texts`: see
    `decontaminate`."""
    params = select_params(cfg, round_idx)
    run_script(con, view_sql("settings"), params, "settings.sql")
    check_rank_by(con, cfg.select.rank_by)
    run_script(con, view_sql("pool"), params, "pool.sql")
    run_script(con, view_sql("guards"), params, "guards.sql")
    if cfg.decontam.enabled:
        decontaminate(con, cfg, round_idx, eval_texts)
    text = candidates_view(cfg.select.where, cfg.select.qualify)
    key = "select.where/select.qualify"
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as e:
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    if len(statements) != 1 or statements[0].named_parameters:
        raise ConfigError(f"{key}: a clause must be one SQL expression (no ';', no $parameters)")
    try:
        con.execute(statements[0])
    except duckdb.Error as e:
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    return params


def guards_enabled(cfg: Config) -> bool:
    s = cfg.select
    return bool(
        s.drop_truncated or s.drop_empty or s.drop_duplicates or s.drop_constant or s.min_margin > 0 or s.pass_band
    )


def dropped_counts(con: duckdb.DuckDBPyConnection, cfg: Config) -> dict[str, int]:
    """Rows dropped by each guard and by the user's clauses (zero for those not enabled, without a scan)."""
    names = [name for key, name in GUARDS.items() if getattr(cfg.select, key)]
    names += [name for key, name in DECONTAM_GUARDS.items() if getattr(cfg.decontam, key)]
    counts = dict.fromkeys(names, 0)
    if names:
        counts |= dict(con.execute(view_sql("dropped")).fetchall())
    if cfg.select.where or cfg.select.qualify:
        counts[USER_FILTER] = fetch_row(
            con, "select (select count(*) from guarded_candidates) - (select count(*) from candidates)"
        )[0]
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Checks and output forms


def has_quotas(cfg: Config) -> bool:
    return bool(cfg.select.task_quota or cfg.select.level_quota)


def apply_quotas(con: duckdb.DuckDBPyConnection, table: pa.Table, cfg: Config) -> pa.Table:
    """The strategy's selection within select.task_quota and select.level_quota (views/quotas.sql)."""
    caps = [("task", str(k), v) for k, v in cfg.select.task_quota.items()]
    caps += [("level", str(k), v) for k, v in cfg.select.level_quota.items()]
    quota_caps = pa.table(
        {"kind": [c[0] for c in caps], "name": [c[1] for c in caps], "cap": pa.array([c[2] for c in caps], pa.int64())}
    )
    con.register("strategy_rows", table)
    con.register("quota_caps", quota_caps)
    try:
        return con.sql(view_sql("quotas")).to_arrow_table().select(table.column_names)
    finally:
        con.unregister("strategy_rows")
        con.unregister("quota_caps")


def check_selected(
    con: duckdb.DuckDBPyConnection, table: pa.Table, cfg: Config, params: dict[str, Any], where: str
) -> dict[str, int]:
    """dbt-style data tests on the selected rows; raise before anything is published. Quotas may leave a prompt
    with candidates unselected, and keep fewer rows than global_top's alpha."""
    strategy = cfg.select.strategy
    capped = has_quotas(cfg)
    missing = [name for name in schemas.SELECTED.names if name not in table.column_names]
    if missing:
        raise DataError(f"{where}: the selection has no column {missing[0]!r}; it needs {schemas.SELECTED.names}")
    n_samples, n_scores = fetch_row(
        con, "select (select count(*) from raw_samples), (select count(*) from raw_scores)"
    )
    if n_scores != n_samples:
        raise DataError(f"{where}: {n_scores} scores for {n_samples} samples; rerun `raft-data score --force`")
    con.register("selected_rows", table.select(schemas.SELECTED.names))
    try:
        result = con.execute(view_sql("checks"), {"round": params["round"]})
        c = dict(zip([d[0] for d in result.description], result.fetchall()[0], strict=True))
        if strategy == "custom":
            c["n_not_scored"] = fetch_row(con, view_sql("checks_custom"))[0]
    finally:
        con.unregister("selected_rows")
    n_rows = c["n_rows"]
    if c["n_misaligned"]:
        raise DataError(
            f"{where}: {c['n_misaligned']} scores rows do not line up with their samples rows "
            "(prompt_id, sample_idx); rerun `raft-data score --force`"
        )
    if c["n_null_ids"] or c["n_null_rewards"]:
        raise DataError(f"{where}: {c['n_null_ids']} null prompt_id and {c['n_null_rewards']} null reward rows")
    if c["n_distinct_samples"] != n_rows:
        raise DataError(f"{where}: the selection repeats a sample ({n_rows} rows, {c['n_distinct_samples']} samples)")
    if strategy == "custom" and c["n_not_scored"]:
        raise DataError(f"{where}: {c['n_not_scored']} selected rows are not scored samples (or changed the reward)")
    if strategy != "custom" and c["n_selected_candidates"] != n_rows:
        raise DataError(f"{where}: {n_rows - c['n_selected_candidates']} selected rows are not candidates")
    if strategy in ONE_PER_PROMPT:
        if c["n_prompts"] != n_rows:
            raise DataError(f"{where}: the selection repeats a prompt_id ({n_rows} rows, {c['n_prompts']} prompts)")
        if n_rows != c["n_candidate_prompts"] and not capped:
            raise DataError(f"{where}: {n_rows} rows for {c['n_candidate_prompts']} prompts with candidates")
    if strategy in ("top_n_per_prompt", "distinct_correct") and c["max_per_prompt"] > cfg.select.n:
        raise DataError(f"{where}: a prompt has {c['max_per_prompt']} rows, more than select.n={cfg.select.n}")
    if strategy == "global_top" and not capped and n_rows != math.ceil(round(params["alpha"] * c["n_candidates"], 9)):
        raise DataError(f"{where}: {n_rows} rows, expected alpha={params['alpha']} of {c['n_candidates']}")
    counts = {
        "samples": n_samples,
        "candidates": c["n_candidates"],
        "selected": n_rows,
        "selected_prompts": c["n_prompts"],
    }
    failed = fetch_row(con, "select count_if(error is not null) from raw_scores")[0]
    if failed:  # rows the backend or the reward failed on: left out before anything was ranked
        counts["failed"] = failed
    return counts


def check_pairs(con: duckdb.DuckDBPyConnection, table: pa.Table, cfg: Config, where: str) -> dict[str, int]:
    """Data tests on preference pairs: one per prompt at most, from candidates, chosen above rejected."""
    ids = table["prompt_id"].to_pylist()
    if len(set(ids)) != len(ids) or None in ids:
        raise DataError(f"{where}: the pairs repeat a prompt_id or have a null one")
    chosen, rejected = table["chosen_reward"].to_pylist(), table["rejected_reward"].to_pylist()
    low = [pid for pid, c, r in zip(ids, chosen, rejected, strict=True) if not c > r]
    if low and cfg.select.rank_by == "reward":
        raise DataError(f"{where}: prompt_id={low[0]} has a chosen reward not above the rejected one")
    n_samples, n_candidates, n_prompts = fetch_row(
        con,
        "select (select count(*) from raw_samples), (select count(*) from candidates), "
        "(select count(distinct prompt_id) from candidates)",
    )
    return {"samples": n_samples, "candidates": n_candidates, "pairs": table.num_rows, "candidate_prompts": n_prompts}


def as_messages(con: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
    con.register("selected_rows", table)
    try:
        return con.sql(view_sql("messages")).to_arrow_table()
    finally:
        con.unregister("selected_rows")


def round_connection(cfg: Config, round_idx: int, eval_texts: pa.Table | None = None) -> duckdb.DuckDBPyConnection:
    """A connection over one round for `inspect` and `sql`: the selection views plus prompts and selected."""
    rounds = pool_rounds(cfg, round_idx)
    pool_manifests(cfg, rounds)
    con = connect(cfg, rounds)
    define_views(con, cfg, round_idx, eval_texts)
    rdir = storage.round_dir(cfg, round_idx)
    if (rdir / "prompts.parquet").exists():
        con.read_parquet(str(rdir / "prompts.parquet")).create_view("prompts")
    selected = rdir / storage.STAGE_FOLDERS["select"]
    if (selected / "manifest.json").exists():
        con.read_parquet([str(p) for p in storage.shard_files(selected)]).create_view("selected")
    else:
        run_script(con, view_sql("no_selected"), {}, "no_selected.sql")
    return con
