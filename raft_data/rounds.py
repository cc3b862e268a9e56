"""Rounds: run generate -> score -> select -> sft -> eval for rounds 0..N-1, resuming wherever the run stopped.

Run as:
    raft-data rounds 3 --config pipelines/imdb_positive.yaml
    raft-data rounds 5 --config pipelines/imdb_positive.yaml rounds.mode=offline rounds.sft_from=base
    make rounds N=3

Each stage skips itself when its manifest exists, so rerunning after a crash (or with a larger N) continues
where the run stopped. `rounds.mode` chooses where samples come from (online: the newest model; offline: the
base model every round); `rounds.sft_from` where each round's SFT starts (previous: the previous round's model;
base: the base model, ReST-EM). With `rounds.patience` > 0 the run stops once held-out reward (sampled) has risen
by less than `rounds.epsilon` over the round before, `patience` rounds in a row; the baseline counts as the round
before round 0. One summary line is printed per round.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raft_data import artifacts
from raft_data.cli_common import DEFAULT_CONFIG, user_errors
from raft_data.config import Config, load_config
from raft_data.evaluate import baseline_dir, evaluate, format_metrics
from raft_data.generate import generate
from raft_data.score import score
from raft_data.select import select


def round_wall_time(cfg: Config, round_idx: int) -> float:
    """Seconds the round's stages took, summed from their manifests (time spent in earlier, resumed runs included)."""
    rdir = artifacts.round_dir(cfg, round_idx)
    total = 0.0
    for folder in artifacts.STAGE_FOLDERS.values():
        path = rdir / folder / "manifest.json"
        if path.exists():
            total += artifacts.read_json(path).get("wall_time_s", 0.0)
    return total


def should_stop(history: list[float], epsilon: float, patience: int) -> bool:
    """True when the last `patience` rises of `history` (baseline first, then each round) are all below epsilon."""
    if patience <= 0 or len(history) <= patience:
        return False
    rises = [b - a for a, b in zip(history[:-1], history[1:], strict=True)][-patience:]
    return all(rise < epsilon for rise in rises)


def run_rounds(cfg: Config, n_rounds: int) -> list[dict[str, Any]]:
    """Run rounds 0..n_rounds-1 (finished stages are skipped); returns each finished round's eval metrics."""
    from raft_sft.train import train

    results: list[dict[str, Any]] = []
    history: list[float] = []
    for round_idx in range(n_rounds):
        generate(cfg, round_idx)
        score(cfg, round_idx)
        select(cfg, round_idx)
        train(cfg, round_idx)
        manifest = evaluate(cfg, round_idx)
        if round_idx == 0:
            history.append(artifacts.read_json(baseline_dir(cfg) / "manifest.json")["metrics"]["reward_sampled"])
        metrics = manifest["metrics"]
        history.append(metrics["reward_sampled"])
        results.append(metrics)
        print(f"round {round_idx}: {format_metrics(metrics)} | {round_wall_time(cfg, round_idx):.0f}s", flush=True)
        if should_stop(history, cfg.rounds.epsilon, cfg.rounds.patience):
            print(
                f"rounds: stopping after round {round_idx}: held-out reward rose by less than "
                f"{cfg.rounds.epsilon} for {cfg.rounds.patience} round(s)"
            )
            break
    return results


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raft-data rounds",
        description="Run generate, score, select, sft and eval for rounds 0..N-1, resuming where a run stopped.",
    )
    parser.add_argument("n_rounds", type=int, metavar="N", help="number of rounds (rounds 0..N-1)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. rounds.mode=offline"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = make_parser()
    args = parser.parse_intermixed_args(argv)  # N, --config and overrides in any order
    if args.n_rounds < 1:
        parser.error(f"N={args.n_rounds} is invalid: expected >= 1")
    try:
        cfg = load_config(args.config, args.overrides)
        run_rounds(cfg, args.n_rounds)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
