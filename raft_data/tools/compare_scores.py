"""`raft-data compare-scores`: how two scorings of one round's samples agree, which prompts flip, and what the
configured selection would keep differently.

Run as:
    raft-data rescore --config pipelines/imdb_positive.yaml --round 0 --into vader_completion \\
        score.reward=vader_completion
    raft-data compare-scores --config pipelines/imdb_positive.yaml --round 0 --a scores --b rescores/vader_completion

Each side is `scores` or `rescores/<name>` of the round, finished and made from the round's current samples. The
numbers (`selection/sql/metrics/compare_scores.sql`, `compare_prompts.sql`) are over the samples both sides scored:
Pearson and Spearman correlation of the rewards; for binary rewards (all 0 or 1) the agreement rate and the
confusion table; per prompt, whether the best sample changes and how many samples flip. The selection is the
configured strategy run by the selection engine on each side's scores in a scratch folder (links to the round's
samples and that side's shards, removed afterwards): the rows one side keeps and the other does not.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import ConfigError, StageError
from raft_data.selection.engine import (
    METRICS_DIR,
    connect,
    define_views,
    pool_rounds,
    run_query,
    strategy_sql,
)
from raft_data.stages.score import RESCORES, rescore_folder

SCORE_COLUMNS = ["prompt_id", "sample_idx", "reward", "error"]


def side_folder(cfg: Config, round_idx: int, side: str) -> Path:
    """The folder a side names: `scores` or `rescores/<name>` of the round."""
    rdir = storage.round_dir(cfg, round_idx)
    if side == storage.STAGE_FOLDERS["score"]:
        return rdir / side
    head, _, name = side.partition("/")
    if head != RESCORES or not name:
        raise ConfigError(f"--a/--b={side!r} is invalid: expected scores or rescores/<name>")
    return rescore_folder(rdir, name)


def read_side(cfg: Config, round_idx: int, side: str, samples_identity: str) -> tuple[Path, pa.Table]:
    """A finished side's folder and its (prompt_id, sample_idx, reward, error) rows, its files checked against its
    manifest and its samples the round's current ones."""
    folder = side_folder(cfg, round_idx, side)
    if not (folder / "manifest.json").exists():
        hint = "raft-data score" if side == "scores" else f"raft-data rescore --into {side.partition('/')[2]}"
        raise StageError(f"{folder} is not finished: run `{hint} --round {round_idx}` first")
    manifest = storage.read_verified(folder, "score", round_idx)
    made_from = ((manifest.get("inputs") or {}).get("samples") or {}).get("identity")
    if made_from != samples_identity:
        raise StageError(f"{folder} scored other samples than the round's samples/ now holds: score it again first")
    files = storage.shard_files(folder)
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        table = pq.read_table(f, columns=[c for c in SCORE_COLUMNS if c in names])
        if "error" not in names:  # scores written before rows could fail
            table = table.append_column("error", pa.nulls(table.num_rows, pa.string()))
        tables.append(table.select(SCORE_COLUMNS))
    return folder, pa.concat_tables(tables)


def compare_tables(a: pa.Table, b: pa.Table) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-prompt rows) of two score tables with columns prompt_id, sample_idx, reward, error."""
    con = duckdb.connect()
    con.register("a_scores", a)
    con.register("b_scores", b)
    summary = con.sql((METRICS_DIR / "compare_scores.sql").read_text(encoding="utf-8")).to_arrow_table()
    prompts = con.sql((METRICS_DIR / "compare_prompts.sql").read_text(encoding="utf-8")).to_arrow_table()
    out = summary.to_pylist()[0]
    for key in ("pearson", "spearman"):  # no variance on a side: no correlation
        if out[key] is not None and out[key] != out[key]:
            out[key] = None
    if not out["binary"]:
        for key in ("agreement", "a1_b1", "a1_b0", "a0_b1", "a0_b0"):
            out.pop(key)
    out["binary"] = bool(out["binary"])
    return out, prompts.to_pylist()


def selected_keys(cfg: Config, round_idx: int, scores_folder: Path, scratch: Path) -> set[tuple[str, int]]:
    """The (prompt_id, sample_idx) the configured strategy keeps when the round is scored by `scores_folder`: the
    selection engine run over a scratch copy of the round's layout (links, not copies)."""
    rounds = pool_rounds(cfg, round_idx)
    alt = dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, output_root=str(scratch)))
    for r in rounds:
        real, linked = storage.round_dir(cfg, r), storage.round_dir(alt, r)
        linked.mkdir(parents=True)
        (linked / storage.STAGE_FOLDERS["generate"]).symlink_to((real / storage.STAGE_FOLDERS["generate"]).resolve())
        scores = scores_folder if r == round_idx else real / storage.STAGE_FOLDERS["score"]
        (linked / storage.STAGE_FOLDERS["score"]).symlink_to(scores.resolve())
    con = connect(alt, rounds)
    params = define_views(con, alt, round_idx)
    table = run_query(con, strategy_sql(alt), params, f"select.strategy={cfg.select.strategy!r}")
    return set(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))


def compare_scores(cfg: Config, round_idx: int, a: str, b: str) -> dict[str, Any]:
    """How scorings `a` and `b` of a round agree, per prompt, and in what the configured selection keeps."""
    if a == b:
        raise ConfigError(f"--a and --b are both {a!r}: name two scorings of the round")
    _, samples_ref = storage.read_input(cfg, "generate", round_idx)
    a_folder, a_table = read_side(cfg, round_idx, a, samples_ref["identity"])
    b_folder, b_table = read_side(cfg, round_idx, b, samples_ref["identity"])
    summary, prompts = compare_tables(a_table, b_table)
    flips = [p for p in prompts if p["best_changed"] or (summary["binary"] and p["n_disagree"] > 0)]
    with tempfile.TemporaryDirectory(prefix="raft-compare-") as scratch:
        kept_a = selected_keys(cfg, round_idx, a_folder, Path(scratch) / "a")
        kept_b = selected_keys(cfg, round_idx, b_folder, Path(scratch) / "b")
    return {
        "round": round_idx,
        "a": a,
        "b": b,
        **summary,
        "n_prompts": len(prompts),
        "best_changed": sum(p["best_changed"] for p in prompts),
        "flipped_prompts": flips,
        "selection": {
            "strategy": cfg.select.strategy,
            "kept_a": len(kept_a),
            "kept_b": len(kept_b),
            "kept_both": len(kept_a & kept_b),
            "only_a": [{"prompt_id": p, "sample_idx": i} for p, i in sorted(kept_a - kept_b)],
            "only_b": [{"prompt_id": p, "sample_idx": i} for p, i in sorted(kept_b - kept_a)],
        },
    }


def format_comparison(result: dict[str, Any], max_prompts: int = 10) -> str:
    """The comparison as a few lines of text."""

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    a, b = result["a"], result["b"]
    lines = [
        f"round {result['round']}: {a} (a) vs {b} (b), {result['n_paired']} samples scored by both "
        f"({result['n_a']} in a, {result['n_b']} in b)",
        f"  rank correlation (Spearman) {number(result['spearman'])}, Pearson {number(result['pearson'])}",
    ]
    if result["binary"]:
        lines += [
            f"  binary: agreement {number(result['agreement'])}",
            "             b=1   b=0",
            f"    a=1  {result['a1_b1']:6d}{result['a1_b0']:6d}",
            f"    a=0  {result['a0_b1']:6d}{result['a0_b0']:6d}",
        ]
    lines.append(
        f"  best sample (by reward alone) changes on {result['best_changed']} of {result['n_prompts']} prompts"
    )
    flips = result["flipped_prompts"]
    for p in flips[:max_prompts]:
        flipped = f", {p['n_disagree']} of {p['n_samples']} samples flip" if result["binary"] else ""
        lines.append(
            f"    {p['prompt_id']}: best sample a={p['best_a']} ({p['best_a_reward']:.4g}) "
            f"b={p['best_b']} ({p['best_b_reward']:.4g}){flipped}"
        )
    if len(flips) > max_prompts:
        lines.append(f"    ... {len(flips) - max_prompts} more (--json lists them all)")
    sel = result["selection"]
    lines.append(
        f"  selection ({sel['strategy']}, guards and where included): a keeps {sel['kept_a']}, "
        f"b keeps {sel['kept_b']}, both {sel['kept_both']}; "
        f"{len(sel['only_a'])} kept only by a, {len(sel['only_b'])} only by b"
    )
    return "\n".join(lines)
