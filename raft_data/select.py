"""Select: rank a round's scored samples with a DuckDB query from `raft_data/sql/<strategy>.sql`.

Run as:
    raft-data select --config pipelines/imdb_positive.yaml --round 0
    python -m raft_data.select --config pipelines/imdb_positive.yaml --round 0

Writes `round-NNNN/selected/shard-00000-of-00001.parquet` in prompt/completion form, ready for TRL's SFTTrainer,
after checking it like a data test: prompt_id unique and not null, reward not null, no more rows than prompts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from raft_data import artifacts, schemas
from raft_data.cli_common import add_stage_args, run_cli
from raft_data.config import Config, ConfigError, config_hash
from raft_data.prompts import DataError

SQL_DIR = Path(__file__).parent / "sql"


def strategies() -> list[str]:
    return sorted(p.stem for p in SQL_DIR.glob("*.sql"))


def strategy_sql(name: str) -> str:
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise ConfigError(f"select.strategy={name!r} is unknown: choose from {', '.join(strategies())}")
    return path.read_text(encoding="utf-8")


def connect(samples_dir: Path, scores_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views raw_samples and raw_scores over a round's shards."""
    con = duckdb.connect()
    con.read_parquet([str(p) for p in artifacts.shard_files(samples_dir)]).create_view("raw_samples")
    con.read_parquet([str(p) for p in artifacts.shard_files(scores_dir)]).create_view("raw_scores")
    return con


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    """One row of a query. fetchall, not fetchone: DuckDB keeps a half-read result open and blocks the connection."""
    return con.execute(sql).fetchall()[0]


def run_selection(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return con.execute(sql).to_arrow_table()


def check_selected(con: duckdb.DuckDBPyConnection, table: pa.Table, where: str) -> dict[str, int]:
    """dbt-style data tests on the selected rows; raise before anything is published."""
    n_samples, n_prompts, n_scores = fetch_row(
        con,
        "select (select count(*) from raw_samples), (select count(distinct prompt_id) from raw_samples), "
        "(select count(*) from raw_scores)",
    )
    if n_scores != n_samples:
        raise DataError(f"{where}: {n_scores} scores for {n_samples} samples; rerun `raft-data score --force`")
    con.register("selected_rows", table)
    n_rows, n_unique, null_ids, null_rewards = fetch_row(
        con,
        "select count(*), count(distinct prompt_id), count(*) - count(prompt_id), count(*) - count(reward) "
        "from selected_rows",
    )
    con.unregister("selected_rows")
    if null_ids or null_rewards:
        raise DataError(f"{where}: selection has {null_ids} null prompt_id and {null_rewards} null reward rows")
    if n_unique != n_rows:
        raise DataError(f"{where}: selection repeats a prompt_id ({n_rows} rows, {n_unique} prompts)")
    if n_rows > n_prompts:
        raise DataError(f"{where}: selection has {n_rows} rows for {n_prompts} prompts")
    return {"samples": n_samples, "prompts": n_prompts, "selected": n_rows}


def select(cfg: Config, round_idx: int, force: bool = False) -> dict:
    """Run the select stage of one round; returns its manifest."""
    rdir = artifacts.round_dir(cfg, round_idx)
    samples_dir = rdir / artifacts.STAGE_FOLDERS["generate"]
    scores_dir = rdir / artifacts.STAGE_FOLDERS["score"]
    samples_manifest = artifacts.read_manifest(samples_dir, "generate", round_idx)
    scores_manifest = artifacts.read_manifest(scores_dir, "score", round_idx)
    sql = strategy_sql(cfg.select.strategy)
    folder = rdir / artifacts.STAGE_FOLDERS["select"]
    stage_cfg = {
        "select": cfg.select.__dict__,
        "sql": sql,
        "samples": samples_manifest["config_hash"],
        "scores": scores_manifest["config_hash"],
        "round": round_idx,
    }
    chash = config_hash(stage_cfg)
    with artifacts.stage_lock(rdir, "select"):
        run = artifacts.begin_stage(folder, stage_cfg, chash, force, round_idx, in_place=False)
        if run.done:
            print(f"select: {folder} is done, skipping")
            return artifacts.read_json(folder / "manifest.json")
        con = connect(samples_dir, scores_dir)
        table = run_selection(con, sql)
        counts = check_selected(con, table, f"{folder} ({cfg.select.strategy})")
        mean_all = fetch_row(con, "select avg(reward) from raw_scores")[0]
        mean_selected = pc.mean(table["reward"]).as_py() if table.num_rows else None
        tmp = artifacts.tmp_folder(folder)
        artifacts.write_parquet(table, tmp / artifacts.shard_name(0, 1), schemas.SELECTED)
        manifest = artifacts.finish_stage(
            run,
            "select",
            round_idx,
            inputs={"samples": samples_manifest["config_hash"], "scores": scores_manifest["config_hash"]},
            counts=counts,
            extra={"reward": {"mean_all": mean_all, "mean_selected": mean_selected}},
            folder=tmp,
        )
        artifacts.publish_folder(folder)
        print(
            f"select round {round_idx}: kept {counts['selected']} of {counts['samples']} samples; "
            f"mean reward selected {mean_selected or 0:.4f} vs all {mean_all or 0:.4f}"
        )
        return manifest


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-data select",
        description="Rank a round's scored samples with a DuckDB query and write the selected set.",
    )
    return add_stage_args(parser)


def main(argv: list[str] | None = None) -> None:
    run_cli(make_parser(), select, argv)


if __name__ == "__main__":
    main()
