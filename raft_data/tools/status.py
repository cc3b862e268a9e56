"""Status: what a round holds, stage by stage, read from the manifests.

Run as:
    raft-data status --config pipelines/imdb_positive.yaml --round 0
"""

from __future__ import annotations

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import UserError
from raft_data.stages.evaluate import format_metrics
from raft_data.stages.select import decontam_line


def format_pass(metrics: dict) -> str:
    """pass@k, maj@k and mixed outcomes on one line, then each task's and each level's pass@1."""
    keys = [k for k in metrics if k.startswith(("pass@", "maj@"))]
    line = " ".join(f"{k} {metrics[k]:.3f}" for k in keys) + f" | mixed {metrics.get('mixed', 0):.2f}"
    tasks = metrics.get("by_task") or {}
    if tasks:
        line += " | " + " ".join(f"task {t} pass@1 {m['pass@1']:.3f}" for t, m in tasks.items())
    levels = metrics.get("by_level") or {}
    if len(levels) > 1:
        line += " | " + " ".join(f"{lv} pass@1 {m['pass@1']:.3f}" for lv, m in levels.items())
    return line


def round_status(cfg: Config, round_idx: int) -> list[str]:
    """The round's stages in order, each done (counts, wall time, what it cost), stale (an input changed since it
    was made: the command that redoes it), or the command that is next."""
    rdir = storage.round_dir(cfg, round_idx)
    lines = [f"round {round_idx}: {rdir}"]
    memo: dict = {}
    for stage, info in storage.STAGES.items():
        name = info.folder
        manifest = rdir / name / "manifest.json"
        if not manifest.exists():
            shards = sorted((rdir / name).glob("shard-*.done")) if info.sharded else []
            where = f" ({len(shards)} shards done)" if shards else ""
            lines.append(
                f"  {name + '/':10s} not done{where} (next: {storage.NEXT_COMMAND[stage]} --round {round_idx})"
            )
            break
        why = storage.stale_reason(rdir / name, memo)
        if why is not None:
            lines.append(f"  {name + '/':10s} STALE: {why} (redo: {storage.NEXT_COMMAND[stage]} --round {round_idx})")
            continue
        m = storage.read_json(manifest)
        counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
        lines.append(f"  {name + '/':10s} done in {m['wall_time_s']:.1f}s: {counts}")
        if m.get("cost"):
            lines.append(f"  {'':10s} cost: {format_cost(m['cost'])}")
        if stage == "score" and m.get("pass_at_k"):
            lines.append(f"  {'':10s} {format_pass(m['pass_at_k'])}")
        if stage == "select":
            r = m.get("reward") or {}
            if r.get("mean_selected") is not None:
                lines.append(
                    f"  {'':10s} mean reward: selected {r['mean_selected']:.4f}, all samples {r['mean_all']:.4f}"
                )
            if m.get("decontamination"):
                lines.append(f"  {'':10s} {decontam_line(m['decontamination'])}")
            per = per_selected(cfg, round_idx)
            if per:
                lines.append(f"  {'':10s} per selected sample: {per}")
        if stage == "eval" and m.get("metrics"):
            lines.append(f"  {'':10s} {format_metrics(m['metrics'])}")
    return lines


def format_cost(cost: dict) -> str:
    """Seconds and tokens a stage's shards took, summed over the processes that ran them."""
    parts = [(k, cost.get(k)) for k in ("wall_s", "cpu_s", "gpu_s", "generated_tokens", "prompt_tokens")]
    return ", ".join(f"{k} {v:g}" for k, v in parts if v is not None)


def per_selected(cfg: Config, round_idx: int) -> str:
    """What each selected sample cost (generated tokens, seconds of the round's stages) and the acceptance rate,
    by level where the round has levels."""
    cost = storage.round_cost(cfg, round_idx)
    if not cost or not cost["selected"]:
        return ""
    parts = [
        f"{cost['tokens_per_selected']:.1f} generated tokens" if cost.get("tokens_per_selected") is not None else "",
        f"{cost['seconds_per_selected']:.3f} s",
        f"acceptance {cost['acceptance']:.3f}" if cost["acceptance"] is not None else "",
        " ".join(f"{lv} {rate:.3f}" for lv, rate in cost["acceptance_by_level"].items()),
        " ".join(f"task {t} {rate:.3f}" for t, rate in (cost.get("acceptance_by_task") or {}).items()),
    ]
    return ", ".join(p for p in parts if p)


def verify_experiment(cfg: Config) -> list[str]:
    """Every finished stage of the experiment (the baseline too) checked against its manifest: each listed file
    there with its size and checksum (model weights and replay data included), no shard added, and no input
    changed since the stage was made. One line per problem, none when all is well."""
    problems = []
    memo: dict = {}
    for folder in storage.stage_folders(storage.experiment_dir(cfg)):
        stage = next(name for name, info in storage.STAGES.items() if info.folder == folder.name)
        round_idx = int(folder.parent.name.split("-")[1]) if folder.parent.name.startswith("round-") else 0
        try:
            storage.read_verified(folder, stage, round_idx)
        except UserError as e:
            problems.append(str(e))
            continue
        why = storage.stale_reason(folder, memo)
        if why is not None:
            problems.append(f"{folder} is stale ({why}): rerun `{storage.NEXT_COMMAND[stage]} --round {round_idx}`")
    return problems
