"""Status: what a round holds, stage by stage, read from the manifests.

Run as:
    raft-data status --config pipelines/imdb_positive.yaml --round 0
"""

from __future__ import annotations

from raft_data import storage
from raft_data.config import Config


def round_status(cfg: Config, round_idx: int) -> list[str]:
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
        if stage == "select":
            r = m.get("reward") or {}
            if r.get("mean_selected") is not None:
                lines.append(
                    f"  {'':10s} mean reward: selected {r['mean_selected']:.4f}, all samples {r['mean_all']:.4f}"
                )
    return lines
