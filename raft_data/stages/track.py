"""Track: send finished rounds to experiment trackers (`tracking.report_to`: trackio, tensorboard, wandb, mlflow).

Run as:
    raft-data rounds 3 --config pipelines/imdb_positive.yaml tracking.report_to=[tensorboard]   # after each round
    raft-data track --config pipelines/imdb_positive.yaml tracking.report_to=[tensorboard,mlflow]  # replay later

One step per round (the round index): the eval metrics (`eval/...`, and the base model's as `baseline/...` at step
0), the selection statistics (`select/...`: counts, mean rewards, rows each guard dropped, acceptance), what each
stage cost (`cost/...`: seconds per stage, generated tokens, per selected sample) and the SFT loss (`train/...`),
plus a table of kept and rejected samples of a few prompts. Everything is read from the round's manifests and
Parquet files, so logging after the fact gives what logging during the run gives.

Logging is idempotent per step: `<tracking dir>/logged.json` records, per tracker, each round sent and the
identities of the artifacts it was read from; a round is sent again only when those changed (a stage rebuilt, or
an eval that finished since).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config, config_hash
from raft_data.config.sections import finite
from raft_data.errors import ConfigError
from raft_data.selection.engine import METRICS_DIR
from raft_data.storage.tracking import (
    point_trackio,
    project_name,
    run_name,
    tracker_dir,
    tracker_env,
    tracking_dir,
    wandb_run_id,
)

TABLE_COLUMNS = ["round", "prompt_id", "sample_idx", "prompt", "completion", "reward", "kept"]
# The characters every tracker takes in a metric name (mlflow is the strictest).
_NAME_OK = re.compile(r"[^A-Za-z0-9_\-./ :]")

# ---------------------------------------------------------------------------------------------------------------------
# What a round logs, read from its artifacts


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    """Finite numbers of a nested mapping as `prefix/key/...` scalars (booleans and text are left out)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out)
    elif finite(value):
        out[_NAME_OK.sub("_", prefix)] = float(value)


def _manifest(cfg: Config, round_idx: int, stage: str) -> dict[str, Any] | None:
    path = storage.round_dir(cfg, round_idx) / storage.STAGE_FOLDERS[stage] / "manifest.json"
    return storage.read_json(path) if path.exists() else None


def finished_rounds(cfg: Config) -> list[int]:
    """The rounds whose selection is finished (the least a round needs to be logged), in order."""
    return storage.rounds_with(cfg, "select")


def kept_and_rejected(cfg: Config, round_idx: int) -> list[dict[str, Any]]:
    """The samples of the round's first `tracking.table_prompts` prompts, kept ones first, then the rejected ones
    best first, an equal share of `tracking.table_max_rows` per prompt (none for preference pairs)."""
    n_prompts, max_rows = cfg.tracking.table_prompts, cfg.tracking.table_max_rows
    selected = _manifest(cfg, round_idx, "select")
    if not n_prompts or not max_rows or selected is None or selected.get("format") == "pairs":
        return []
    import duckdb

    rdir = storage.round_dir(cfg, round_idx)
    con = duckdb.connect()
    try:
        for view, stage in (("raw_samples", "generate"), ("raw_scores", "score")):
            files = [str(p) for p in storage.shard_files(rdir / storage.STAGE_FOLDERS[stage])]
            if not files:
                return []
            con.read_parquet(files).create_view(view)
        # a pooled selection (cumulative) holds earlier rounds' samples too: only this round's can be kept here
        chosen = [
            pq.read_table(p, columns=["prompt_id", "sample_idx", "round"])
            for p in storage.shard_files(rdir / storage.STAGE_FOLDERS["select"])
        ]
        if not chosen:
            return []
        chosen_rows = pa.concat_tables(chosen)
        con.register("raw_selected", chosen_rows.filter(pc.equal(chosen_rows["round"], round_idx)))
        sql = (METRICS_DIR / "kept_and_rejected.sql").read_text(encoding="utf-8")
        rows = con.sql(sql, params={"n_prompts": n_prompts}).to_arrow_table().to_pylist()
    finally:
        con.close()
    share = max(1, max_rows // n_prompts)
    per_prompt: dict[str, int] = {}
    out = []
    for row in rows:
        if per_prompt.get(row["prompt_id"], 0) >= share or len(out) >= max_rows:
            continue
        per_prompt[row["prompt_id"]] = per_prompt.get(row["prompt_id"], 0) + 1
        out.append({"round": round_idx, **{k: row[k] for k in TABLE_COLUMNS if k != "round"}})
    return out


def round_record(cfg: Config, round_idx: int) -> dict[str, Any] | None:
    """What round n logs: {"round", "scalars", "rows", "fingerprint"}; None before its selection is finished."""
    selected = _manifest(cfg, round_idx, "select")
    if selected is None:
        return None
    scalars: dict[str, float] = {}
    evaluated = _manifest(cfg, round_idx, "eval")
    if evaluated is not None:
        _flatten("eval", evaluated.get("metrics") or {}, scalars)
    if round_idx == 0:
        base = storage.baseline_dir(cfg) / "manifest.json"
        if base.exists():
            _flatten("baseline", storage.read_json(base).get("metrics") or {}, scalars)
    _flatten("select", selected.get("counts") or {}, scalars)
    _flatten("select/reward", selected.get("reward") or {}, scalars)
    _flatten("select/dropped", selected.get("dropped") or {}, scalars)
    cost = storage.round_cost(cfg, round_idx) or {}
    _flatten("select/acceptance", cost.get("acceptance"), scalars)
    _flatten("select/acceptance_by_level", cost.get("acceptance_by_level") or {}, scalars)
    _flatten("select/acceptance_by_task", cost.get("acceptance_by_task") or {}, scalars)
    for key in ("seconds", "tokens", "seconds_per_selected", "tokens_per_selected"):
        _flatten(f"cost/{key}", cost.get(key), scalars)
    identities = {}
    for stage in storage.STAGES:
        manifest = _manifest(cfg, round_idx, stage)
        if manifest is None:
            continue
        identities[stage] = manifest.get("identity") or manifest.get("config_hash")
        stage_cost = manifest.get("cost") or {}
        _flatten(f"cost/{stage}_s", stage_cost.get("wall_s", manifest.get("wall_time_s")), scalars)
    trained = _manifest(cfg, round_idx, "train")
    if trained is not None:
        _flatten("train/loss", trained.get("train_loss"), scalars)
        _flatten("train/steps", (trained.get("counts") or {}).get("steps"), scalars)
    rows = kept_and_rejected(cfg, round_idx)
    fingerprint = config_hash({"identities": identities, "table": [cfg.tracking.table_prompts, len(rows)]})
    return {"round": round_idx, "scalars": scalars, "rows": rows, "fingerprint": fingerprint}


# ---------------------------------------------------------------------------------------------------------------------
# The trackers: one function each, `log(cfg, records)`, that opens the run, logs every record at its round's step
# and closes it. A tracker's library is imported only when it is asked for.


def _table_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(cell(r[c]) for c in TABLE_COLUMNS) + " |\n" for r in rows)


def _columns(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r[c] for c in TABLE_COLUMNS] for r in rows]


def log_tensorboard(cfg: Config, records: list[dict[str, Any]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tracker_dir(cfg, "tensorboard") / run_name(cfg)))
    try:
        for record in records:
            for key, value in record["scalars"].items():
                writer.add_scalar(key, value, record["round"])
            if record["rows"]:
                writer.add_text("samples/kept_and_rejected", _table_markdown(record["rows"]), record["round"])
    finally:
        writer.close()


def log_trackio(cfg: Config, records: list[dict[str, Any]]) -> None:
    folder = tracker_dir(cfg, "trackio")
    folder.mkdir(parents=True, exist_ok=True)
    point_trackio(folder)
    import trackio

    # trackio prints what it does (run created, dashboard hint) on stdout: a round's own line says where it went
    with contextlib.redirect_stdout(io.StringIO()):
        trackio.init(
            project=project_name(cfg),
            name=run_name(cfg),
            resume="allow",
            embed=False,
            auto_log_gpu=False,
            auto_log_cpu=False,
        )
        try:
            for record in records:
                metrics: dict[str, Any] = dict(record["scalars"])
                if record["rows"]:
                    metrics["samples/kept_and_rejected"] = trackio.Table(
                        columns=TABLE_COLUMNS, data=_columns(record["rows"])
                    )
                trackio.log(metrics, step=record["round"])
        finally:
            trackio.finish()


def log_wandb(cfg: Config, records: list[dict[str, Any]]) -> None:
    import wandb

    env = tracker_env(cfg)
    folder = Path(env["WANDB_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    name = run_name(cfg)
    run = wandb.init(
        project=project_name(cfg),
        name=name,
        id=wandb_run_id(cfg, name),
        dir=str(folder),
        mode=env["WANDB_MODE"],
        resume="allow",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    try:
        # the round is the x axis of every metric: a resumed run (or SFT runs in between) never moves it backwards
        run.define_metric("round")
        run.define_metric("*", step_metric="round")
        for record in records:
            metrics: dict[str, Any] = {"round": record["round"], **record["scalars"]}
            if record["rows"]:
                metrics["samples/kept_and_rejected"] = wandb.Table(
                    columns=TABLE_COLUMNS, data=_columns(record["rows"])
                )
            run.log(metrics)
    finally:
        run.finish()


def log_mlflow(cfg: Config, records: list[dict[str, Any]]) -> None:
    import os

    env = tracker_env(cfg)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    tracker_dir(cfg, "mlflow").mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(project_name(cfg))
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(project_name(cfg))
    name = run_name(cfg)
    found = [r for r in client.search_runs([experiment_id], max_results=50_000) if r.info.run_name == name]
    run_id = found[0].info.run_id if found else client.create_run(experiment_id, run_name=name).info.run_id
    try:
        for record in records:
            for key, value in record["scalars"].items():
                client.log_metric(run_id, key, value, step=record["round"])
            if record["rows"]:
                table = {c: [r[c] for r in record["rows"]] for c in TABLE_COLUMNS}
                client.log_table(run_id, table, f"samples/round-{record['round']:04d}.json")
    finally:
        client.set_terminated(run_id)


TRACKER_LOGGERS: dict[str, Callable[[Config, list[dict[str, Any]]], None]] = {
    "trackio": log_trackio,
    "tensorboard": log_tensorboard,
    "wandb": log_wandb,
    "mlflow": log_mlflow,
}
# The package each tracker needs, for the error when it is missing.
TRACKER_PACKAGES = {"trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}


# ---------------------------------------------------------------------------------------------------------------------
# Logging rounds, once each


def ledger_path(cfg: Config) -> Path:
    return tracking_dir(cfg) / "logged.json"


def track(cfg: Config, rounds: list[int] | None = None, force: bool = False) -> dict[str, dict[str, Any]]:
    """Send rounds (default: every round with a finished selection) to each tracker of `tracking.report_to` that has
    not received them as they are now (`force`: send them again). Returns, per tracker, the rounds sent and the
    seconds it took: {"tensorboard": {"rounds": [0, 1], "seconds": 0.4}, ...}."""
    trackers = cfg.tracking.report_to
    if not trackers:
        return {}
    rounds = finished_rounds(cfg) if rounds is None else rounds
    records = [r for r in (round_record(cfg, i) for i in rounds) if r is not None]
    path = ledger_path(cfg)
    ledger: dict[str, dict[str, str]] = storage.read_json(path) if path.exists() else {}
    sent: dict[str, dict[str, Any]] = {}
    for tracker in trackers:
        done = ledger.get(tracker, {})
        todo = [r for r in records if force or done.get(str(r["round"])) != r["fingerprint"]]
        started = time.perf_counter()
        if todo:
            try:
                TRACKER_LOGGERS[tracker](cfg, todo)
            except ImportError as e:
                raise ConfigError(
                    f"tracking.report_to names {tracker}, but it cannot be imported ({e}): "
                    f"pip install {TRACKER_PACKAGES[tracker]}"
                ) from None
            ledger[tracker] = done | {str(r["round"]): r["fingerprint"] for r in todo}
            storage.write_json(ledger, path)
        sent[tracker] = {"rounds": [r["round"] for r in todo], "seconds": round(time.perf_counter() - started, 3)}
    return sent
