"""Benchmark: what the decontamination guards add to the select stage, at 10^4 and 10^5 samples.

Run as:
    python -m bench.decontam                          # 10^4 and 10^5 samples (K = 16), 3 repetitions, 2 threads
    python -m bench.decontam --sizes 10000 --reps 1   # a quick look

Writes a fake round with bench.select's writer (6-word prompts, 12-word completions from a 20-word vocabulary), and an
evaluation file of 1,000 random 30-word texts plus 50 of the round's own prompt + completion texts (so that the
guard finds and drops something). Then times the whole select stage (best_per_prompt) with the guards off, with
`decontam.drop_contaminated`, with `decontam.drop_near_duplicates`, and with both; prints medians as a Markdown table
with the rows each guard dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.select import WORDS, bench_config, words

VARIANTS = {
    "guards off": {},
    "contaminated": {"drop_contaminated": True},
    "near_duplicate": {"drop_near_duplicates": True},
    "both": {"drop_contaminated": True, "drop_near_duplicates": True},
}


def make_round(workdir: Path, n_prompts: int, k: int, n_shards: int = 4, seed: int = 0) -> None:
    """samples/ and scores/ of round 0 in the stages' schemas, with manifests that list their files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raft_data import storage
    from raft_data.storage import schemas

    rdir = storage.round_dir(bench_config(workdir, k), 0)
    rng = np.random.default_rng(seed)
    per_shard = -(-n_prompts // n_shards)
    for s in range(n_shards):
        lo, hi = s * per_shard, min(n_prompts, (s + 1) * per_shard)
        n = (hi - lo) * k
        prompt_idx = pa.array(np.repeat(np.arange(hi - lo), k))
        prompt_id = pa.array([f"p{i:07d}" for i in range(lo, hi)]).take(prompt_idx)
        sample_idx = pa.array(np.tile(np.arange(k, dtype=np.int32), hi - lo))
        samples = {
            "prompt_id": prompt_id,
            "sample_idx": sample_idx,
            "prompt": words(rng, hi - lo, 6).take(prompt_idx),
            "completion": words(rng, n, 12),
            "n_tokens": pa.array(rng.integers(1, 48, n, dtype=np.int32)),
            "truncated": pa.array(rng.random(n) < 0.2),
            "source": pa.array(["policy"] * n),
            "generator": pa.array(["bench"] * n),
            "seed": pa.array(np.zeros(n, dtype=np.int64)),
            "round": pa.array(np.zeros(n, dtype=np.int32)),
        }
        reward = pa.array(np.round(rng.normal(0, 0.5, n), 3))
        scores = {"prompt_id": prompt_id, "sample_idx": sample_idx, "reward": reward, "vader": reward}
        for folder, data, schema in (
            (rdir / "samples", samples, schemas.SAMPLES),
            (rdir / "scores", scores, schemas.scores_schema(["vader"])),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            columns = {f.name: data.get(f.name, pa.nulls(n, f.type)) for f in schema}
            pq.write_table(pa.table(columns, schema=schema), folder / storage.shard_name(s, n_shards))
    for stage, folder in (("generate", rdir / "samples"), ("score", rdir / "scores")):
        files = storage.inventory(folder)
        manifest = {"stage": stage, "round": 0, "config_hash": f"bench-{stage}", "config": {}, "files": files}
        manifest |= {"identity": storage.manifests.identity(files), "counts": {"rows": n_prompts * k}}
        storage.write_json(manifest, folder / "manifest.json")


def eval_file(workdir: Path, rdir: Path, n_texts: int = 1000, n_planted: int = 50) -> Path:
    import duckdb
    import numpy as np

    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 30)) for _ in range(n_texts)]
    files = [str(p) for p in sorted((rdir / "samples").glob("shard-*.parquet"))]
    planted = duckdb.execute(
        "select prompt || ' ' || completion from read_parquet($files) order by hash(prompt_id, sample_idx) limit $n",
        {"files": files, "n": n_planted},
    ).fetchall()
    path = workdir / "eval.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts + [p for (p,) in planted]))
    return path


def run(workdir: Path, k: int, decontam: dict, threads: int) -> tuple[float, dict]:
    from raft_data.stages.select import select

    cfg = bench_config(workdir, k)
    cfg.prompts.heldout_fraction = 0.0
    for key, value in decontam.items():
        setattr(cfg.decontam, key, value)
    cfg.decontam.eval_files = [str(workdir / "eval.jsonl")]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = select(cfg, 0, force=True, threads=threads)
    return time.perf_counter() - start, manifest["dropped"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="samples per round")
    parser.add_argument("--k", type=int, default=16, help="samples per prompt")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| samples | guards | median s | min s | max s | vs off | dropped |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for size in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix="raft-bench-decontam-"))
        try:
            make_round(workdir, size // args.k, args.k, n_shards=4)
            eval_file(workdir, workdir / "runs" / "bench" / "round-0000")
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            dropped: dict[str, dict] = {}
            for _ in range(args.reps):  # interleaved, so that a busy moment hits every variant alike
                for name, decontam in VARIANTS.items():
                    seconds, dropped[name] = run(workdir, args.k, decontam, args.threads)
                    times[name].append(seconds)
            off = statistics.median(times["guards off"])
            for name, found in times.items():
                median = statistics.median(found)
                shown = ", ".join(f"{k} {v}" for k, v in dropped[name].items()) or "-"
                print(
                    f"| {size:,} | {name} | {median:.2f} | {min(found):.2f} | {max(found):.2f} | "
                    f"{median / off:.2f}x | {shown} |"
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
