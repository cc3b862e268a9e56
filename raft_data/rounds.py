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
before round 0. One summary line is printed per round. With `tracking.report_to` set, each finished round is then
sent to those trackers (`stages/track.py`).

The drift guard (`rounds.max_kl_per_token`, `rounds.max_ppl_ratio`) reads each round's eval: when a bound is crossed,
`rounds.on_drift=stop` ends the run with one line naming the metric, its value, the bound, the round, and the last
model within bounds; `rollback` goes on, and the next round samples from and fine-tunes that last model within
bounds (`storage.policy_for_round` passes over drifted rounds). A rerun sees the same evals and decides the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from raft_data import storage
from raft_data.config import Config
from raft_data.errors import ConfigError
from raft_data.stages.evaluate import evaluate, format_metrics
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.stages.track import track
from raft_data.storage.tracking import tracking_dir

# The SFT stage, `train(cfg, round_idx) -> manifest`: `raft_sft.train.train`, handed in by the command line, so
# that building data never imports the trainer.
TrainFn = Callable[[Config, int], dict]


def should_stop(history: list[float], epsilon: float, patience: int) -> bool:
    """True when the last `patience` rises of `history` (baseline first, then each round) are all below epsilon."""
    if patience <= 0 or len(history) <= patience:
        return False
    rises = [b - a for a, b in zip(history[:-1], history[1:], strict=True)][-patience:]
    return all(rise < epsilon for rise in rises)


def last_good_model(cfg: Config, round_idx: int) -> str:
    """The newest model before round_idx within the drift bounds: a round's model/ folder, or the base model."""
    good = storage.last_good_round(cfg, round_idx - 1)
    if good is None:
        return f"the base model {cfg.model.name_or_path}"
    return f"round {good}: {storage.round_dir(cfg, good) / storage.STAGE_FOLDERS['train']}"


def run_rounds(cfg: Config, n_rounds: int, train: TrainFn) -> list[dict[str, Any]]:
    """Run rounds 0..n_rounds-1 (finished stages are skipped); returns each finished round's eval metrics.
    `train` is the SFT stage (`raft_sft.train.train`)."""
    if cfg.rounds.max_ppl_ratio is not None and cfg.eval.reference_column is None:
        raise ConfigError(
            f"rounds.max_ppl_ratio={cfg.rounds.max_ppl_ratio!r} needs eval.reference_column: the perplexity ratio is "
            "measured on held-out reference text"
        )
    results: list[dict[str, Any]] = []
    history: list[float] = []
    for round_idx in range(n_rounds):
        generate(cfg, round_idx)
        score(cfg, round_idx)
        select(cfg, round_idx)
        train(cfg, round_idx)
        manifest = evaluate(cfg, round_idx)
        if round_idx == 0:
            history.append(storage.read_json(storage.baseline_dir(cfg) / "manifest.json")["metrics"]["reward_sampled"])
        metrics = manifest["metrics"]
        history.append(metrics["reward_sampled"])
        results.append(metrics)
        print(
            f"round {round_idx}: {format_metrics(metrics)} | {storage.round_wall_time(cfg, round_idx):.0f}s",
            flush=True,
        )
        if cfg.tracking.report_to:
            started = time.perf_counter()
            sent = track(cfg, [round_idx])
            took = ", ".join(f"{tracker} {s['seconds']:.3f}s" for tracker, s in sent.items())
            print(
                f"tracking: round {round_idx} sent in {time.perf_counter() - started:.2f}s ({took}) -> "
                f"{tracking_dir(cfg)}",
                flush=True,
            )
        crossed = storage.drift(cfg, metrics, round_idx)
        if crossed and cfg.rounds.on_drift == "stop":
            print(
                f"rounds: stopping after round {round_idx}: {crossed}; last model within bounds: "
                f"{last_good_model(cfg, round_idx)}",
                flush=True,
            )
            break
        if crossed:
            print(
                f"rounds: {crossed}: rolled back, round {round_idx + 1} starts from {last_good_model(cfg, round_idx)}",
                flush=True,
            )
        if should_stop(history, cfg.rounds.epsilon, cfg.rounds.patience):
            print(
                f"rounds: stopping after round {round_idx}: held-out reward rose by less than "
                f"{cfg.rounds.epsilon} for {cfg.rounds.patience} round(s)"
            )
            break
    return results
