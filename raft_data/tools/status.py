"""Status: what a round holds, stage by stage, read from the manifests.

Run as:
    raft-data status --config pipelines/imdb_positive.yaml --round 0
"""

from __future__ import annotations

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import UserError
from raft_data.stages.evaluate import format_metrics


def format_pass(metrics: dict) -> str:
    """pass@k, maj@k and mixed outcomes on one line, then each level's pass@1."""
    keys = [k for k in metrics if k.startswith(("pass@", "maj@"))]
    line = " ".join(f"{k} {metrics[k]:.3f}" for k in keys) + f" | mixed {metrics.get('mixed', 0):.2f}"
    levels = metrics.get("by_level") or {}
    if len(levels) > 1:
        line += " | " + " ".join(f"{lv} pass@1 {m['pass@1']:.3f}" for lv, m in levels.items())
    return line


def round_status(cfg: Config, round_idx: int) -> list[str]:
    """The round's stages in order, each done (counts, wall time) or the command that is next."""
    rdir = storage.round_dir(cfg, round_idx)
    lines = [f"round {round_idx}: {rdir}"]
    for stage, name in storage.STAGE_FOLDERS.items():
        manifest = rdir / name / "manifest.json"
        if not manifest.exists():
            lines.append(f"  {name + '/':10s} not done (next: {storage.NEXT_COMMAND[stage]} --round {round_idx})")
            break
        m = storage.read_json(manifest)
        counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
        lines.append(f"  {name + '/':10s} done in {m['wall_time_s']:.1f}s: {counts}")
        if stage == "score" and m.get("pass_at_k"):
            lines.append(f"  {'':10s} {format_pass(m['pass_at_k'])}")
        if stage == "select":
            r = m.get("reward") or {}
            if r.get("mean_selected") is not None:
                lines.append(
                    f"  {'':10s} mean reward: selected {r['mean_selected']:.4f}, all samples {r['mean_all']:.4f}"
                )
        if stage == "eval" and m.get("metrics"):
            lines.append(f"  {'':10s} {format_metrics(m['metrics'])}")
    return lines


def verify_experiment(cfg: Config) -> list[str]:
    """Every finished stage of every round checked against its manifest (shards present, unchanged, none added);
    one line per problem, none when all is well."""
    problems = []
    rounds = sorted(storage.experiment_dir(cfg).glob("round-[0-9][0-9][0-9][0-9]"))
    for rdir in rounds:
        round_idx = int(rdir.name.split("-")[1])
        for stage in ("generate", "score", "select"):
            folder = rdir / storage.STAGE_FOLDERS[stage]
            if not (folder / "manifest.json").exists():
                continue
            try:
                storage.read_verified(folder, stage, round_idx)
            except UserError as e:
                problems.append(str(e))
        model = rdir / storage.STAGE_FOLDERS["train"]
        if (model / "manifest.json").exists() and not (model / "config.json").is_file():
            problems.append(
                f"{model} has a manifest but no config.json: rerun `raft-sft train --round {round_idx} --force`"
            )
    return problems
