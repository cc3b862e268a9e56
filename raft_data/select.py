"""Select: rank a round's scored samples with a DuckDB query from `raft_data/sql/<strategy>.sql`.

Run as:
    raft-data select --config pipelines/imdb_positive.yaml --round 0
    raft-data select --config pipelines/imdb_positive.yaml --round 0 select.strategy=top_n_per_prompt select.n=2
    raft-data select --round 0 select.drop_duplicates=true select.where="n_tokens >= 8" select.format=messages
    python -m raft_data.select --config pipelines/imdb_positive.yaml --round 0

How a selection is built, all in DuckDB over the Parquet shards (nothing is loaded into Python first):
  1. `sql/views/settings.sql` binds the select config as variables ($name parameters, never pasted into SQL);
  2. `sql/views/pool.sql` defines the read-only views samples, scores and scored over the pool: this round, or
     for `cumulative` this round and every earlier one;
  3. `sql/views/guards.sql` marks the rows each enabled guard drops (view guarded) and keeps the rest;
  4. the user's `select.where` / `select.qualify` clauses, if any, filter those into the view candidates;
  5. the strategy's query (`sql/<strategy>.sql`, or `select.sql_file` with strategy custom) ranks candidates.
The result is checked like a data test (`sql/views/checks.sql`) before `selected/` is published with a manifest
(counts, rows dropped by each guard) and a dataset card (README.md), in prompt/completion or messages form.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from raft_data import artifacts, schemas
from raft_data.cli_common import add_stage_args, run_cli
from raft_data.config import Config, ConfigError, config_hash
from raft_data.prompts import DataError

SQL_DIR = Path(__file__).parent / "sql"
VIEWS_DIR = SQL_DIR / "views"

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
}
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


def pool_manifests(cfg: Config, rounds: list[int]) -> dict[int, tuple[dict, dict]]:
    """Each pool round's (samples manifest, scores manifest); a missing one names the command that makes it."""
    manifests = {}
    for r in rounds:
        rdir = artifacts.round_dir(cfg, r)
        samples = artifacts.read_manifest(rdir / artifacts.STAGE_FOLDERS["generate"], "generate", r)
        scores = artifacts.read_manifest(rdir / artifacts.STAGE_FOLDERS["score"], "score", r)
        manifests[r] = (samples, scores)
    return manifests


def connect(cfg: Config, rounds: list[int], threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views raw_samples and raw_scores over the shards of `rounds`."""
    sample_files, score_files = [], []
    for r in rounds:
        rdir = artifacts.round_dir(cfg, r)
        sample_files += artifacts.shard_files(rdir / artifacts.STAGE_FOLDERS["generate"])
        score_files += artifacts.shard_files(rdir / artifacts.STAGE_FOLDERS["score"])
    con = duckdb.connect(config={"threads": threads} if threads else {})
    con.read_parquet([str(p) for p in sample_files]).create_view("raw_samples")
    # scores shards carry no round column: pool.sql reads it from the file name
    con.read_parquet([str(p) for p in score_files], filename=True, union_by_name=True).create_view("raw_scores")
    return con


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


def define_views(con: duckdb.DuckDBPyConnection, cfg: Config, round_idx: int) -> dict[str, Any]:
    """settings, pool, guards and candidates views on `con`; returns the bound parameters."""
    params = select_params(cfg, round_idx)
    run_script(con, view_sql("settings"), params, "settings.sql")
    check_rank_by(con, cfg.select.rank_by)
    run_script(con, view_sql("pool"), params, "pool.sql")
    run_script(con, view_sql("guards"), params, "guards.sql")
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
    return bool(s.drop_truncated or s.drop_empty or s.drop_duplicates or s.drop_constant or s.min_margin > 0)


def dropped_counts(con: duckdb.DuckDBPyConnection, cfg: Config) -> dict[str, int]:
    """Rows dropped by each guard and by the user's clauses (zero for those not enabled, without a scan)."""
    names = [name for key, name in GUARDS.items() if getattr(cfg.select, key)]
    counts = dict.fromkeys(names, 0)
    if names:
        counts |= dict(con.execute(view_sql("dropped")).fetchall())
    if cfg.select.where or cfg.select.qualify:
        counts[USER_FILTER] = fetch_row(
            con, "select (select count(*) from guarded_candidates) - (select count(*) from candidates)"
        )[0]
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Checks, output forms and the dataset card


def check_selected(
    con: duckdb.DuckDBPyConnection, table: pa.Table, cfg: Config, params: dict[str, Any], where: str
) -> dict[str, int]:
    """dbt-style data tests on the selected rows; raise before anything is published."""
    strategy = cfg.select.strategy
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
        if n_rows != c["n_candidate_prompts"]:
            raise DataError(f"{where}: {n_rows} rows for {c['n_candidate_prompts']} prompts with candidates")
    if strategy == "top_n_per_prompt" and c["max_per_prompt"] > cfg.select.n:
        raise DataError(f"{where}: a prompt has {c['max_per_prompt']} rows, more than select.n={cfg.select.n}")
    if strategy == "global_top" and n_rows != math.ceil(round(params["alpha"] * c["n_candidates"], 9)):
        raise DataError(f"{where}: {n_rows} rows, expected alpha={params['alpha']} of {c['n_candidates']}")
    return {
        "samples": n_samples,
        "candidates": c["n_candidates"],
        "selected": n_rows,
        "selected_prompts": c["n_prompts"],
    }


def as_messages(con: duckdb.DuckDBPyConnection, table: pa.Table) -> pa.Table:
    con.register("selected_rows", table)
    try:
        return con.sql(view_sql("messages")).to_arrow_table()
    finally:
        con.unregister("selected_rows")


def dataset_card(cfg: Config, round_idx: int, counts: dict, dropped: dict, lineage: dict, reward: dict) -> str:
    """README.md for `selected/`: the folder can be published as a dataset as it is."""
    s = cfg.select
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "shard-*.parquet"}]}],
        "tags": ["raft", "rejection-sampling", "synthetic"],
        "task_categories": ["text-generation"],
    }
    form = (
        "`messages`: a user turn (the prompt) and an assistant turn (the completion)"
        if s.format == "messages"
        else "`prompt` and `completion` (TRL's prompt/completion form: completion-only loss)"
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    dropped_rows = "\n".join(f"| {k} | {v} |" for k, v in dropped.items()) or "| (no guard enabled) | 0 |"
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# {cfg.experiment.name}, round {round_idx}: selected samples

Samples generated by a policy model, scored by a reward, and kept by the `{s.strategy}` selection of a RAFT
(reward-ranked fine-tuning) round. Each row is one sample; the text is in {form}.

Load it with `datasets.load_dataset("parquet", data_files="shard-*.parquet")`.

## Counts

| count | value |
| --- | --- |
{rows}

Mean reward: selected {reward["mean_selected"]}, all samples {reward["mean_all"]}.

Rows dropped before ranking:

| guard | rows |
| --- | --- |
{dropped_rows}

## Selection config

```yaml
{yaml.safe_dump({"select": s.__dict__}, sort_keys=False).strip()}
```

## Lineage

```yaml
{yaml.safe_dump(lineage, sort_keys=False).strip()}
```

## Columns

- `prompt_id`: the prompt's id, stable across rounds; `sample_idx`: the sample's index among the prompt's K.
- {form}.
- `reward`: the score the reward gave the sample; `n_tokens`: generated tokens; `truncated`: stopped by the
  token limit; `source`: where the sample came from; `round`: the round that generated it.
"""


# ---------------------------------------------------------------------------------------------------------------------
# The stage


def select(cfg: Config, round_idx: int, force: bool = False, threads: int | None = None) -> dict:
    """Run the select stage of one round; returns its manifest."""
    rdir = artifacts.round_dir(cfg, round_idx)
    rounds = pool_rounds(cfg, round_idx)
    manifests = pool_manifests(cfg, rounds)
    sql = strategy_sql(cfg)
    folder = rdir / artifacts.STAGE_FOLDERS["select"]
    inputs = {
        f"round-{r:04d}": {"samples": m[0]["config_hash"], "scores": m[1]["config_hash"]} for r, m in manifests.items()
    }
    stage_cfg = {
        "select": cfg.select.__dict__,
        "alpha": select_params(cfg, round_idx)["alpha"],
        "sql": sql,
        "views": {
            name: view_sql(name) for name in ("settings", "pool", "guards", "checks", "checks_custom", "messages")
        },
        "inputs": inputs,
        "round": round_idx,
    }
    chash = config_hash(stage_cfg)
    where = f"{folder} ({cfg.select.strategy})"
    with artifacts.stage_lock(rdir, "select"):
        run = artifacts.begin_stage(folder, stage_cfg, chash, force, round_idx, in_place=False)
        if run.done:
            print(f"select: {folder} is done, skipping")
            return artifacts.read_json(folder / "manifest.json")
        con = connect(cfg, rounds, threads)
        params = define_views(con, cfg, round_idx)
        table = run_query(con, sql, params, f"select.strategy={cfg.select.strategy!r}")
        counts = check_selected(con, table, cfg, params, where)
        counts = {"prompts": manifests[round_idx][0]["counts"].get("prompts"), **counts}
        dropped = dropped_counts(con, cfg)
        mean_all = fetch_row(con, "select avg(reward) from scores where round = $r", {"r": round_idx})[0]
        mean_selected = pc.mean(table["reward"]).as_py() if table.num_rows else None
        reward = {"mean_all": mean_all, "mean_selected": mean_selected}
        lineage = {
            "experiment": cfg.experiment.name,
            "round": round_idx,
            "pool_rounds": rounds,
            "generators": [g for (g,) in con.execute("select distinct generator from samples order by 1").fetchall()],
            "reward": manifests[round_idx][1]["config"].get("score"),
            "inputs": inputs,
            "select_config_hash": chash,
        }
        tmp = artifacts.tmp_folder(folder)
        if cfg.select.format == "messages":
            out, schema = as_messages(con, table.select(schemas.SELECTED.names)), schemas.SELECTED_MESSAGES
        else:
            out, schema = table, schemas.SELECTED
        artifacts.write_parquet(out, tmp / artifacts.shard_name(0, 1), schema)
        artifacts.write_text(dataset_card(cfg, round_idx, counts, dropped, lineage, reward), tmp / "README.md")
        manifest = artifacts.finish_stage(
            run,
            "select",
            round_idx,
            inputs=inputs if len(rounds) > 1 else inputs[f"round-{round_idx:04d}"],
            counts=counts,
            extra={"dropped": dropped, "reward": reward, "format": cfg.select.format, "pool_rounds": rounds},
            folder=tmp,
        )
        artifacts.publish_folder(folder)
        print(
            f"select round {round_idx} ({cfg.select.strategy}): kept {counts['selected']} of {counts['samples']} "
            f"samples; mean reward selected {mean_selected or 0:.4f} vs all {mean_all or 0:.4f}"
        )
        if dropped:
            print("  dropped before ranking: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
        return manifest


def round_connection(cfg: Config, round_idx: int) -> duckdb.DuckDBPyConnection:
    """A connection over one round for `inspect` and `sql`: the selection views plus prompts and selected."""
    rounds = pool_rounds(cfg, round_idx)
    pool_manifests(cfg, rounds)
    con = connect(cfg, rounds)
    define_views(con, cfg, round_idx)
    rdir = artifacts.round_dir(cfg, round_idx)
    if (rdir / "prompts.parquet").exists():
        con.read_parquet(str(rdir / "prompts.parquet")).create_view("prompts")
    selected = rdir / artifacts.STAGE_FOLDERS["select"]
    if (selected / "manifest.json").exists():
        con.read_parquet([str(p) for p in artifacts.shard_files(selected)]).create_view("selected")
    else:
        run_script(con, view_sql("no_selected"), {}, "no_selected.sql")
    return con


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-data select",
        description="Rank a round's scored samples with a DuckDB query and write the selected set. "
        f"Strategies (select.strategy): {', '.join(strategies())}.",
    )
    return add_stage_args(parser)


def main(argv: list[str] | None = None) -> None:
    run_cli(make_parser(), select, argv)


if __name__ == "__main__":
    main()
