"""Select: rank a round's scored samples with a DuckDB query from `raft_data/selection/sql/<strategy>.sql`.

Run as:
    raft-data select --config pipelines/imdb_positive.yaml --round 0
    raft-data select --config pipelines/imdb_positive.yaml --round 0 select.strategy=top_n_per_prompt select.n=2
    raft-data select --round 0 select.drop_duplicates=true select.where="n_tokens >= 8" select.format=messages

The selection runs in DuckDB over the Parquet shards (raft_data/selection/engine.py: views, guards, the strategy's
query from raft_data/selection/sql/, data tests); `selected/` is then published with a manifest (counts, rows
dropped by each guard) and a dataset card (README.md), in prompt/completion or messages form.
"""

from __future__ import annotations

import sys

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from raft_data import storage
from raft_data.config import Config, config_hash
from raft_data.data.decontam import eval_sources, guard_texts
from raft_data.data.replay import replay_settings, write_replay
from raft_data.selection.card import dataset_card
from raft_data.selection.engine import (
    METRICS_DIR,
    SQL_DIR,
    apply_quotas,
    as_messages,
    check_pairs,
    check_selected,
    connect,
    decontam_sql,
    decontam_stats,
    define_views,
    dropped_counts,
    fetch_row,
    has_quotas,
    pool_manifests,
    pool_rounds,
    run_query,
    select_params,
    strategy_sql,
    view_sql,
)
from raft_data.storage import schemas


def select(cfg: Config, round_idx: int, force: bool = False, threads: int | None = None) -> dict:
    """Run the select stage of one round; returns its manifest."""
    replay_cfg = replay_settings(cfg) if cfg.rounds.replay_fraction > 0 else None
    rdir = storage.round_dir(cfg, round_idx)
    rounds = pool_rounds(cfg, round_idx)
    manifests, refs = pool_manifests(cfg, rounds)
    pairs = cfg.select.format == "pairs"
    sql = (SQL_DIR / "formats" / "pairs.sql").read_text(encoding="utf-8") if pairs else strategy_sql(cfg)
    folder = rdir / storage.STAGE_FOLDERS["select"]
    inputs = {label: ref["identity"] for label, ref in refs.items()}
    stage_cfg = {
        "select": cfg.select.selection_fields(),  # not the engine's memory settings: they change no row
        "alpha": select_params(cfg, round_idx)["alpha"],
        "sql": sql,
        "views": {
            name: view_sql(name) for name in ("settings", "pool", "guards", "checks", "checks_custom", "messages")
        },
        "round": round_idx,
    }
    if replay_cfg is not None:  # only then, so that a selection without replay keeps its config hash
        stage_cfg["replay"] = replay_cfg
    texts = guard_texts(cfg)
    if cfg.decontam.enabled:  # only then, as replay: a selection without these guards keeps its config hash
        stage_cfg["decontam"] = decontam_config(cfg, texts)
    if has_quotas(cfg):  # the same: only a selection with quotas hashes their query
        stage_cfg["views"]["quotas"] = view_sql("quotas")
    where = f"{folder} ({cfg.select.strategy})"
    neighbours = storage.neighbours(cfg, "select", round_idx)
    with storage.stage(
        "select", folder, stage_cfg, round_idx, force, in_place=False, inputs=refs, neighbours=neighbours
    ) as run:
        if run.done:
            return run.manifest
        con = connect(cfg, rounds, threads)
        params = define_views(con, cfg, round_idx, texts)
        table = run_query(con, sql, params, "pairs.sql" if pairs else f"select.strategy={cfg.select.strategy!r}")
        before_quotas = table.num_rows
        if has_quotas(cfg):
            table = apply_quotas(con, table, cfg)
        if pairs:
            counts = check_pairs(con, table, cfg, where)
            counts["selected"] = counts["pairs"]
        else:
            counts = check_selected(con, table, cfg, params, where)
        counts = {"prompts": manifests[round_idx][0]["counts"].get("prompts"), **counts}
        if has_quotas(cfg):
            counts["over_quota"] = before_quotas - table.num_rows
        dropped = dropped_counts(con, cfg)
        decontamination = decontam_summary(con, cfg, round_idx, texts, dropped) if cfg.decontam.enabled else None
        mean_all = fetch_row(con, "select avg(reward) from scores where round = $r", {"r": round_idx})[0]
        kept = table["chosen_reward"] if pairs else table["reward"]
        mean_selected = pc.mean(kept).as_py() if table.num_rows else None
        reward = {"mean_all": mean_all, "mean_selected": mean_selected}
        acceptance = {} if pairs else acceptance_by(con, table, round_idx)
        lineage = {
            "experiment": cfg.experiment.name,
            "round": round_idx,
            "pool_rounds": rounds,
            "generators": [g for (g,) in con.execute("select distinct generator from samples order by 1").fetchall()],
            "reward": manifests[round_idx][1]["config"].get("score"),
            "inputs": inputs,
            "select_config_hash": run.config_hash,
        }
        tmp = storage.tmp_folder(folder)
        if cfg.select.format == "messages":
            out, schema = as_messages(con, table.select(schemas.SELECTED.names)), schemas.SELECTED_MESSAGES
        elif pairs:
            out, schema = table, schemas.PAIRS
        else:
            out, schema = table, schemas.SELECTED
        storage.write_parquet(out, tmp / storage.shard_name(0, 1), schema)
        replay = write_replay(cfg, round_idx, table.num_rows, tmp) if replay_cfg is not None else None
        storage.write_text(dataset_card(cfg, round_idx, counts, dropped, lineage, reward), tmp / "README.md")
        manifest = storage.finish_stage(
            run,
            "select",
            round_idx,
            counts=counts,
            extra={
                "dropped": dropped,
                "reward": reward,
                "format": cfg.select.format,
                "pool_rounds": rounds,
                **acceptance,
                **({"replay": replay} if replay is not None else {}),
                **({"decontamination": decontamination} if decontamination is not None else {}),
            },
            folder=tmp,
        )
        storage.publish_folder(folder)
        print(
            f"select round {round_idx} ({cfg.select.strategy}): kept {counts['selected']} of {counts['samples']} "
            f"samples; mean reward selected {mean_selected or 0:.4f} vs all {mean_all or 0:.4f}"
        )
        if dropped:
            print("  dropped before ranking: " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
        if decontamination is not None:
            print(f"  {decontam_line(decontamination)}")
        if replay is not None:
            print(f"  replay: {replay['rows']} reference texts of training prompts added for SFT ({replay['file']})")
        if counts["selected"] == 0:
            print(f"warning: {empty_selection(cfg, round_idx, manifest)}", file=sys.stderr)
        return manifest


def decontam_config(cfg: Config, texts: pa.Table | None) -> dict:
    """What the decontamination guards add to the select stage's config hash: their settings, their SQL, and a digest
    of the evaluation texts (an edited evaluation file makes the selection stale)."""
    out = {"settings": dict(cfg.decontam.__dict__), "sql": {name: decontam_sql(name) for name in ("guards", "stats")}}
    if texts is not None:
        out["eval_texts"] = config_hash(texts["text"].to_pylist())
    return out


def decontam_summary(
    con: duckdb.DuckDBPyConnection, cfg: Config, round_idx: int, texts: pa.Table | None, dropped: dict[str, int]
) -> dict:
    """The manifest's `decontamination` field: what was checked against what, what was found, what was dropped."""
    d = cfg.decontam
    out: dict = {}
    if d.drop_contaminated:
        stats = decontam_stats(con, cfg, round_idx)
        out |= {
            "n": d.n,
            "eval_files": eval_sources(cfg),
            "eval_texts": texts.num_rows if texts is not None else 0,
            "eval_ngrams": stats["eval_ngrams"],
            "checked_rows": stats["checked_rows"],
            "contaminated_rows": stats["contaminated_rows"],
            "contaminated_prompts": stats["contaminated_prompts"],
            "dropped": dropped.get("contaminated", 0),
        }
    if d.drop_near_duplicates:
        out["near_duplicates"] = {
            "threshold": d.near_duplicate_threshold,
            "shingle": d.shingle,
            "dropped": dropped.get("near_duplicate", 0),
        }
    return out


def decontam_line(summary: dict) -> str:
    """One line for a round's decontamination, from the manifest's `decontamination` field."""
    parts = []
    if "checked_rows" in summary:
        sources = summary["eval_files"]
        named = ", ".join(sources) if len(sources) <= 3 else f"{len(sources)} sources"
        parts.append(
            f"contamination: {summary['contaminated_rows']} of {summary['checked_rows']} rows share an n-gram of "
            f"{summary['n']} words with {summary['eval_texts']} eval texts ({named or 'none'}), "
            f"{summary['contaminated_prompts']} prompts by themselves; dropped {summary['dropped']}"
        )
    if "near_duplicates" in summary:
        near = summary["near_duplicates"]
        parts.append(
            f"near-duplicates (Jaccard of {near['shingle']}-word shingles >= {near['threshold']}): "
            f"dropped {near['dropped']}"
        )
    return "; ".join(parts)


def acceptance_by(con, table, round_idx: int) -> dict[str, dict]:
    """Of the round's scored samples of each level, and of each task, the share that the selection kept
    ("acceptance_by_level", "acceptance_by_task"), and the selected rows of each task ("selected_by_task"); a kind
    the round does not have is left out."""
    con.register("selected_rows", table.select(["prompt_id", "sample_idx", "round"]))
    try:
        found = con.execute((METRICS_DIR / "acceptance.sql").read_text(encoding="utf-8"), {"r": round_idx})
        out: dict[str, dict] = {}
        for kind, name, n, kept in found.fetchall():
            out.setdefault(f"acceptance_by_{kind}", {})[name] = round(kept / n, 4) if n else 0.0
            if kind == "task":
                out.setdefault("selected_by_task", {})[name] = kept
        return out
    finally:
        con.unregister("selected_rows")


def empty_selection(cfg: Config, round_idx: int, manifest: dict) -> str:
    """Why a round's selection holds no rows, in one line: the strategy and what each guard or clause dropped."""
    dropped = ", ".join(f"{k} {v}" for k, v in (manifest.get("dropped") or {}).items()) or "no guard enabled"
    strategy = manifest["config"]["select"]["strategy"]
    return (
        f"round {round_idx}: selected/ holds no rows (select.strategy={strategy}; dropped before ranking: "
        f"{dropped}); there is nothing to fine-tune on: loosen the selection and rerun "
        f"`raft-data select --round {round_idx} --force`"
    )
