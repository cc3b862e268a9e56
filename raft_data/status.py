"""Status: what a round holds, stage by stage, read from the manifests.

Run as:
    raft-data status --config pipelines/imdb_positive.yaml --round 0
"""

from __future__ import annotations

import argparse
import sys

from raft_data import artifacts
from raft_data.cli_common import DEFAULT_CONFIG
from raft_data.config import Config, ConfigError, load_config


def round_status(cfg: Config, round_idx: int) -> list[str]:
    rdir = artifacts.round_dir(cfg, round_idx)
    lines = [f"round {round_idx}: {rdir}"]
    for stage, name in artifacts.STAGE_FOLDERS.items():
        manifest = rdir / name / "manifest.json"
        if not manifest.exists():
            lines.append(f"  {name + '/':10s} not done (next: {artifacts.NEXT_COMMAND[stage]} --round {round_idx})")
            break
        m = artifacts.read_json(manifest)
        counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
        lines.append(f"  {name + '/':10s} done in {m['wall_time_s']:.1f}s: {counts}")
        if stage == "select":
            r = m.get("reward") or {}
            if r.get("mean_selected") is not None:
                lines.append(
                    f"  {'':10s} mean reward: selected {r['mean_selected']:.4f}, all samples {r['mean_all']:.4f}"
                )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="raft-data status", description="Show what a round holds, stage by stage.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--round", type=int, default=0, help="round index (default: 0)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(round_status(cfg, args.round)))


if __name__ == "__main__":
    main()
