"""Adaptive against uniform sampling on the arithmetic task: samples generated, and correct samples accepted
(up to `target` per prompt, as `select.strategy: distinct_correct` with `select.n: target` would keep at most).

Run as (from the repository root, after `make setup`):
    python -m bench.adaptive                       # b = 32 single-digit sums, budget 16, target 1
    python -m bench.adaptive --prompts 64 --budget 16 --first 2 --target 1

Uniform draws `budget` samples for every prompt; adaptive draws `first`, then `first` more for each prompt still
short of `target` correct ones, up to `budget`. One run each, same seed; wall times are one run's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def run(out: Path, name: str, overrides: list[str]) -> tuple[int, dict[str, int], float]:
    from raft_data import storage
    from raft_data.config import load_config
    from raft_data.rewards.checkers import checker_reward
    from raft_data.stages.generate import generate

    fixed = [f"experiment.output_root={out}", f"experiment.name={name}"]
    cfg = load_config("pipelines/arithmetic.yaml", [*fixed, *overrides])
    started = time.time()
    generate(cfg, 0)
    seconds = time.time() - started
    files = storage.shard_files(storage.round_dir(cfg, 0) / "samples")
    table = pa.concat_tables(pq.read_table(f) for f in files)
    flags = checker_reward("correct", cfg.score)([], table["completion"].to_pylist(), table["answer"].to_pylist())
    correct: dict[str, int] = {}
    for pid, ok in zip(table["prompt_id"].to_pylist(), flags, strict=True):
        correct[pid] = correct.get(pid, 0) + int(ok)
    return table.num_rows, correct, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--first", type=int, default=2)
    parser.add_argument("--target", type=int, default=1)
    args = parser.parse_args()
    common = [f"prompts.n_prompts={args.prompts}", "generate.n_shards=2"]
    with tempfile.TemporaryDirectory() as tmp:
        uniform = run(Path(tmp), "uniform", [*common, f"generate.n_samples={args.budget}"])
        adaptive = run(
            Path(tmp),
            "adaptive",
            [
                *common,
                f"generate.n_samples={args.first}",
                f"generate.adaptive_target={args.target}",
                f"generate.adaptive_budget={args.budget}",
            ],
        )
    print("| sampling | samples generated | prompts with a correct sample | correct samples accepted | seconds |")
    print("|---|---|---|---|---|")
    for label, (n, correct, seconds) in ((f"uniform K={args.budget}", uniform), ("adaptive", adaptive)):
        solved = sum(c > 0 for c in correct.values())
        accepted = sum(min(c, args.target) for c in correct.values())
        print(f"| {label} | {n} | {solved} of {len(correct)} | {accepted} | {seconds:.0f} |")
    print(f"samples ratio uniform / adaptive: {uniform[0] / adaptive[0]:.2f}x")


if __name__ == "__main__":
    main()
