"""Benchmark: the select stage (best_per_prompt) on 5 million samples, against a bare DuckDB scan and pandas.

Run as:
    python -m bench.select                                   # 100k prompts x K=50, 3 repetitions, 2 threads
    python -m bench.select --prompts 10000 --k 20 --reps 1   # a quick look

Writes a fake round (samples/ and scores/ shards in the stages' schemas, rewards with ties) to --workdir, then
times, each repetition in a fresh process so that its peak memory (max RSS) is its own:
  - ours:   `raft_data.stages.select.select(...)`, the whole stage: views, guards (off), the best_per_prompt query,
            the data tests, the Parquet shard, the dataset card and the manifest;
  - scan:   one DuckDB query reading every column best_per_prompt reads, from the same files, aggregated to one
            row (nothing is ranked or written): the floor for any query over these columns;
  - pandas: read the same columns, merge, sort, groupby(prompt_id).idxmax on the reward, write the Parquet file.
Prints medians as a Markdown table and checks that ours and pandas keep the same rows.
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `select` module, and Python puts the script's folder first on
# sys.path: drop it before anything (subprocess) imports `select`.
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path = [p for p in sys.path if os.path.realpath(p or ".") != HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_COLUMNS = ["prompt_id", "sample_idx", "prompt", "completion", "n_tokens", "truncated", "source", "round"]
WORDS = "the a film movie story plot actor great dull moving slow funny sad long short best worst music scene".split()


def bench_config(workdir: Path, k: int):
    from raft_data.config import config_from_dict

    return config_from_dict(
        {
            "experiment": {"name": "bench", "output_root": str(workdir / "runs")},
            "model": {"name_or_path": "unused"},
            "prompts": {"path": "unused.jsonl"},
            "generate": {"n_samples": k},
        }
    )


def words(rng, n_rows: int, n_words: int):
    """n_rows random texts of n_words words each, built column-wise in Arrow (fast for millions of rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    vocab = pa.array(WORDS)
    parts = [pc.take(vocab, pa.array(rng.integers(0, len(WORDS), n_rows))) for _ in range(n_words)]
    return pc.binary_join_element_wise(*parts, " ")


def make_round(workdir: Path, n_prompts: int, k: int, n_shards: int, seed: int = 0) -> None:
    """samples/ and scores/ of round 0 with manifests, as generate and score write them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raft_data import storage
    from raft_data.storage import schemas
    from raft_data.storage.manifests import identity

    cfg = bench_config(workdir, k)
    rdir = storage.round_dir(cfg, 0)
    if (rdir / "scores" / "manifest.json").exists():
        return
    rng = np.random.default_rng(seed)
    per_shard = -(-n_prompts // n_shards)
    for s in range(n_shards):
        lo, hi = s * per_shard, min(n_prompts, (s + 1) * per_shard)
        n = (hi - lo) * k
        ids = pa.array([f"p{i:07d}" for i in range(lo, hi)])
        prompt_idx = np.repeat(np.arange(hi - lo), k)
        prompt_id = ids.take(pa.array(prompt_idx))
        samples = {
            "prompt_id": prompt_id,
            "sample_idx": pa.array(np.tile(np.arange(k, dtype=np.int32), hi - lo)),
            "prompt": words(rng, hi - lo, 6).take(pa.array(prompt_idx)),
            "completion": words(rng, n, 12),
            "n_tokens": pa.array(rng.integers(1, 48, n, dtype=np.int32)),
            "truncated": pa.array(rng.random(n) < 0.2),
            "source": pa.array(["policy"] * n),
            "generator": pa.array(["bench"] * n),
            "seed": pa.array(np.zeros(n, dtype=np.int64)),
            "round": pa.array(np.zeros(n, dtype=np.int32)),
        }
        # rewards on a grid of 0.001 so that ties within a prompt happen
        reward = pa.array(np.round(rng.normal(0, 0.5, n), 3))
        scores = {"prompt_id": prompt_id, "sample_idx": samples["sample_idx"], "reward": reward, "vader": reward}
        name = storage.shard_name(s, n_shards)
        for folder, data, schema in (
            (rdir / "samples", samples, schemas.SAMPLES),
            (rdir / "scores", scores, schemas.scores_schema(["vader"])),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            # the columns a bench round does not need (gold answers, levels, errors) are null, as generate leaves them
            data = {f.name: data[f.name] if f.name in data else pa.nulls(n, f.type) for f in schema}
            pq.write_table(pa.table(data, schema=schema), folder / name)
            storage.mark_done(folder / name, n)
    inputs = {"model": {"path": "unused", "identity": "base:unused"}}
    for stage, folder in (("generate", "samples"), ("score", "scores")):
        files = storage.inventory(rdir / folder)
        manifest = {
            "stage": stage,
            "round": 0,
            "config_hash": f"bench-{stage}",
            "config": {"score": {"reward": "vader"}},
            "inputs": inputs,
            "counts": {"rows": n_prompts * k},
            "files": files,
            "identity": identity(files),
        }
        storage.write_json(manifest, rdir / folder / "manifest.json")
        inputs = {"samples": storage.input_ref(rdir / folder, manifest)}


# ---------------------------------------------------------------------------------------------------------------------
# The methods, each run in its own process


def run_ours(workdir: Path, k: int, threads: int) -> dict:
    import contextlib
    import io

    from raft_data import storage
    from raft_data.stages.select import select

    cfg = bench_config(workdir, k)
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = select(cfg, 0, force=True, threads=threads)
    out = storage.shard_files(storage.round_dir(cfg, 0) / "selected")[0]
    return {"rows": manifest["counts"]["selected"], "output": str(out)}


def run_scan(workdir: Path, k: int, threads: int) -> dict:
    import duckdb

    rdir = workdir / "runs" / "bench" / "round-0000"
    con = duckdb.connect(config={"threads": threads})
    row = con.execute(
        "select count(*), sum(strlen(prompt_id)), sum(sample_idx), sum(strlen(prompt)), sum(strlen(completion)), "
        "sum(n_tokens), count_if(truncated), sum(strlen(source)), sum(round) from read_parquet($samples)",
        {"samples": str(rdir / "samples" / "shard-*.parquet")},
    ).fetchall()[0]
    scores = con.execute(
        "select count(*), sum(strlen(prompt_id)), sum(sample_idx), sum(reward) from read_parquet($scores)",
        {"scores": str(rdir / "scores" / "shard-*.parquet")},
    ).fetchall()[0]
    assert row[0] == scores[0]
    return {"rows": row[0]}


def run_pandas(workdir: Path, k: int, threads: int) -> dict:
    import pandas as pd
    import pyarrow as pa

    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)
    rdir = workdir / "runs" / "bench" / "round-0000"
    samples = pd.read_parquet(sorted((rdir / "samples").glob("shard-*.parquet")), columns=SAMPLE_COLUMNS)
    scores = pd.read_parquet(
        sorted((rdir / "scores").glob("shard-*.parquet")), columns=["prompt_id", "sample_idx", "reward"]
    )
    df = samples.merge(scores, on=["prompt_id", "sample_idx"]).sort_values(["prompt_id", "sample_idx"])
    df = df.reset_index(drop=True)
    best = df.loc[df.groupby("prompt_id", sort=True)["reward"].idxmax()]  # idxmax: the first maximum
    out = workdir / "pandas_selected.parquet"
    best.to_parquet(out, index=False)
    return {"rows": len(best), "output": str(out)}


METHODS = {"ours": run_ours, "scan": run_scan, "pandas": run_pandas}
# imported before the clock starts: the timings are of the work, not of Python start-up
IMPORTS = {"ours": ["raft_data.stages.select"], "scan": ["duckdb"], "pandas": ["pandas", "pyarrow.parquet"]}


def worker(method: str, workdir: Path, k: int, threads: int) -> None:
    import importlib

    for name in IMPORTS[method]:
        importlib.import_module(name)
    start = time.perf_counter()
    result = METHODS[method](workdir, k, threads)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_worker(method: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--worker", method, "--workdir", str(args.workdir), "--k", str(args.k)]
    cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def same_rows(ours: str, pandas_out: str) -> bool:
    import pyarrow.parquet as pq

    a = pq.read_table(ours, columns=["prompt_id", "sample_idx"]).sort_by("prompt_id")
    b = pq.read_table(pandas_out, columns=["prompt_id", "sample_idx"]).sort_by("prompt_id")
    return a.to_pydict() == b.to_pydict()


def main() -> None:
    parser = argparse.ArgumentParser(description="Time best_per_prompt against a bare DuckDB scan and pandas.")
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/raft-bench-select"))
    parser.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir, args.k, args.threads)
        return

    start = time.perf_counter()
    make_round(args.workdir, args.prompts, args.k, args.shards)
    print(
        f"data: {args.prompts} prompts x K={args.k} = {args.prompts * args.k:,} samples in {args.shards} shards "
        f"({time.perf_counter() - start:.1f}s to make or find) in {args.workdir}"
    )
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for rep in range(args.reps):
        for method in METHODS:  # interleaved, so that a noisy neighbour hurts every method alike
            results[method].append(run_worker(method, args))
            print(f"  rep {rep} {method:6s} {results[method][-1]['seconds']:7.2f}s", flush=True)
    medians = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items()}
    print(f"\nbest_per_prompt, {args.prompts * args.k:,} samples, {args.threads} threads, median of {args.reps}:\n")
    print("| method | median s | min s | max s | peak RSS MB | vs scan | vs ours |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, rs in results.items():
        secs = [r["seconds"] for r in rs]
        rss = max(r["peak_rss_mb"] for r in rs)
        print(
            f"| {m} | {medians[m]:.2f} | {min(secs):.2f} | {max(secs):.2f} | {rss:.0f} | "
            f"{medians[m] / medians['scan']:.2f}x | {medians[m] / medians['ours']:.2f}x |"
        )
    agree = same_rows(results["ours"][-1]["output"], results["pandas"][-1]["output"])
    print(f"\nours and pandas keep the same {results['ours'][-1]['rows']:,} rows: {agree}")


if __name__ == "__main__":
    main()
