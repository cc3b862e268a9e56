"""Cost curves: wall time and peak memory of every stage of a round as the round grows from 10^4 to 10^7 samples.

Run as:
    python -m bench.scale                                      # 10^4, 10^5, 10^6 and 10^7 samples (about an hour)
    python -m bench.scale --sizes 10000 100000 --reps 3        # a quick look
    python -m bench.scale --sizes 1000000 --only select_best_per_prompt duckdb_argmax   # some measurements again
    python -m bench.scale --table                              # the tables and the plot again, from results.json
    make bench-scale SIZES="10000 100000"

For each size N it writes a round of N samples to --workdir: K=16 samples per prompt, shards of at most 250,000 rows
(at least 4), prompts of 6-10 words and completions of 30-60 words drawn from a word-bigram chain over the
movie-review snippets of assets/movie_reviews.parquet, with the manifest generate writes (files, checksums,
identity). Then it runs the real stages on it, each measurement in a fresh process, so that its peak memory (VmHWM)
is its own; imports happen before the clock starts:
  - score_vader, score_python: the score stage with the lexicon reward (`vader`) and with a Python function
    (`bench.scale:keywords`); when VADER would take longer than --score-budget-s at the rate of a smaller size, only
    the first quarter of the shards is scored (`--shard i`, what a shard worker runs) and the time per sample is
    theirs;
  - select_<strategy>: the select stage with each built-in strategy, under select.memory_limit (MEMORY_LIMIT) with
    select.temp_directory (the most it spilled there is recorded); select_steps: best_per_prompt once under
    cProfile, the seconds of each step;
  - duckdb_qualify, duckdb_argmax: best-of-K as a bare DuckDB query from the same files to a Parquet file (`copy`),
    under the same DuckDB settings: the plain SQL (a join on the keys, `qualify row_number() over (partition by
    prompt_id order by reward desc, sample_idx) = 1`) and the fastest form (the positional join and `arg_max` the
    select stage runs);
  - verify: `raft-data status --verify` (every file the manifests list hashed, the lineage checked); read_once: the
    same files read once, nothing else; the same two again after the files are dropped from the page cache (cold);
  - inspect: `raft-data inspect --round 0`; report: `raft-data report` (a small eval is written beside the round);
  - sft_load: what `raft-sft train` does with selected/ before the trainer starts (load_selected, the eos column,
    the example ids), with an empty datasets cache.
Medians of --reps runs below --one-run-from samples, one run from there (the select and bare queries: --reps runs at
every size, their ratio is a goal). Every run is kept in results.json in the work folder; the tables are printed as
Markdown and the plot is written to --plot.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
K = 16
ROWS_PER_SHARD = 250_000
MIN_SHARDS = 4
SIZES = [10_000, 100_000, 1_000_000, 10_000_000]
REVIEWS = ROOT / "assets" / "movie_reviews.parquet"
# what every select run and the bare query may hold in memory before DuckDB spills to the temp folder
MEMORY_LIMIT = "1GB"
# strategy parameters: threshold's tau keeps a few percent of these rewards; n=2 for the per-prompt caps
STRATEGY_SETTINGS = {"top_n_per_prompt": {"n": 2}, "distinct_correct": {"n": 2}, "threshold": {"tau": 0.4}}

# ---------------------------------------------------------------------------------------------------------------------
# The Python function reward: words of praise minus words of blame, per square root of the completion's words.

PRAISE = frozenset(
    "good great best fun funny love beautiful wonderful moving entertaining enjoyable charming smart "
    "clever perfect brilliant engaging delightful touching powerful remarkable terrific".split()
)
BLAME = frozenset(
    "bad worst dull boring mess stupid predictable tedious flat silly awful fails lacks poorly "
    "lame tired weak pointless unfunny ugly annoying bland".split()
)


def keywords(prompts: list[str], completions: list[str]) -> list[float]:
    """(praise words - blame words) / sqrt(words) of each completion: a reward written as a plain Python loop."""
    out = []
    for completion in completions:
        words = completion.lower().split()
        hits = sum((w in PRAISE) - (w in BLAME) for w in words)
        out.append(hits / len(words) ** 0.5 if words else 0.0)
    return out


PYTHON_REWARD = "bench.scale:keywords"

# ---------------------------------------------------------------------------------------------------------------------
# The synthetic round


def n_shards(size: int) -> int:
    return max(MIN_SHARDS, -(-size // ROWS_PER_SHARD))


def size_dir(workdir: Path, size: int) -> Path:
    return workdir / f"n{size}"


def bench_config(workdir: Path, size: int, score: dict | None = None, select: dict | None = None):
    from raft_data.config import config_from_dict

    return config_from_dict(
        {
            "experiment": {"name": "scale", "output_root": str(size_dir(workdir, size) / "runs")},
            "model": {"name_or_path": "unused"},
            "prompts": {"path": "unused.jsonl", "n_prompts": size // K},
            "generate": {"n_samples": K, "n_shards": n_shards(size)},
            "score": {"reward": PYTHON_REWARD, **(score or {})},
            "select": {
                "memory_limit": MEMORY_LIMIT,
                "temp_directory": str(size_dir(workdir, size) / "duckdb_tmp"),
                **(select or {}),
            },
        }
    )


class Chain:
    """A word-bigram chain over the review snippets: texts that read like reviews (for VADER) at any volume."""

    def __init__(self, reviews: Path, seed: int) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        tokens, starts = [], []
        for text in pq.read_table(reviews, columns=["text"])["text"].to_pylist():
            starts.append(len(tokens))
            tokens += text.split()
        vocab, ids = np.unique(np.array(tokens, dtype=object), return_inverse=True)
        ids = ids.astype(np.int64)
        following = np.roll(ids, -1)  # the last word of a snippet is followed by the first of the next
        self.successors = following[np.argsort(ids, kind="stable")]
        self.counts = np.bincount(ids, minlength=len(vocab))
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.first_words = ids[np.array(starts)]
        self.vocab = pa.array(vocab.tolist(), pa.string())
        self.rng = np.random.default_rng(seed)

    def walk(self, state, steps: int):
        """steps words after each word of `state` (one row per state)."""
        import numpy as np

        out = np.empty((len(state), steps), np.int64)
        for j in range(steps):
            pick = (self.rng.random(len(state)) * self.counts[state]).astype(np.int64)
            state = self.successors[self.offsets[state] + pick]
            out[:, j] = state
        return out

    def texts(self, words, lengths):
        """The first lengths[i] words of row i, joined by spaces, as an Arrow string array."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        flat = words[np.arange(words.shape[1])[None, :] < lengths[:, None]]
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        return pc.binary_join(pa.ListArray.from_arrays(offsets, self.vocab.take(pa.array(flat))), " ")


def shard_table(chain: Chain, first_prompt: int, n_prompts: int):
    """n_prompts prompts of 6-10 words with K completions of 30-60 words each, in the samples schema."""
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from raft_data.storage import schemas

    rng = chain.rng
    first = chain.first_words[rng.integers(0, len(chain.first_words), n_prompts)]
    prompt_words = np.concatenate([first[:, None], chain.walk(first, 9)], axis=1)
    prompt_lengths = rng.integers(6, 11, n_prompts)
    prompts = chain.texts(prompt_words, prompt_lengths)
    last = prompt_words[np.arange(n_prompts), prompt_lengths - 1]
    n = n_prompts * K
    lengths = rng.integers(30, 61, n)
    completions = pc.binary_join_element_wise("", chain.texts(chain.walk(np.repeat(last, K), 60), lengths), " ")
    ids = [
        hashlib.sha256(f"scale:{i}".encode()).hexdigest()[:16] for i in range(first_prompt, first_prompt + n_prompts)
    ]
    row_prompt = pa.array(np.repeat(np.arange(n_prompts), K))
    data = {
        "prompt_id": pa.array(ids).take(row_prompt),
        "sample_idx": pa.array(np.tile(np.arange(K, dtype=np.int32), n_prompts)),
        "prompt": prompts.take(row_prompt),
        "completion": completions,
        "n_tokens": pa.array((lengths * 1.3).astype(np.int32)),
        "truncated": pa.array(rng.random(n) < 0.1),
        "source": pa.array(["policy"] * n),
        "generator": pa.array(["transformers:scale"] * n),
        "seed": pa.array(np.full(n, 1234, np.int64)),
        "round": pa.array(np.zeros(n, np.int32)),
        "answer": pa.nulls(n, pa.string()),
        "level": pa.nulls(n, pa.string()),
        "error": pa.nulls(n, pa.string()),
        "pass": pa.array(np.zeros(n, np.int32)),
    }
    return pa.table(data, schema=schemas.SAMPLES), pa.table({"prompt_id": ids, "prompt": prompts})


def make_round(workdir: Path, size: int, seed: int = 0) -> None:
    """prompts.parquet and samples/ of round 0 with its manifest, as generate leaves them (found: kept)."""
    import pyarrow as pa

    from raft_data import storage
    from raft_data.storage import schemas
    from raft_data.storage.manifests import identity

    cfg = bench_config(workdir, size)
    rdir = storage.round_dir(cfg, 0)
    folder = rdir / storage.STAGE_FOLDERS["generate"]
    if (folder / "manifest.json").exists():
        return
    storage.remove_tree(size_dir(workdir, size))
    chain = Chain(REVIEWS, seed)
    total, n_prompts = n_shards(size), size // K
    prompt_tables = []
    for s in range(total):
        lo, hi = s * n_prompts // total, (s + 1) * n_prompts // total
        samples, prompts = shard_table(chain, lo, hi - lo)
        path = folder / storage.shard_name(s, total)
        storage.write_parquet(samples, path, schemas.SAMPLES)
        storage.mark_done(path, samples.num_rows)
        prompt_tables.append(prompts)
    prompts = pa.concat_tables(prompt_tables)
    prompts = prompts.append_column("answer", pa.nulls(prompts.num_rows, pa.string()))
    prompts = prompts.append_column("level", pa.nulls(prompts.num_rows, pa.string()))
    storage.write_parquet(prompts, rdir / "prompts.parquet", schemas.PROMPTS)
    files = storage.inventory(folder)
    manifest = {
        "stage": "generate",
        "round": 0,
        "config_hash": "bench-scale",
        "config": {"generate": cfg.generate.__dict__},
        "inputs": {"model": {"path": "unused", "identity": "base:unused"}},
        "counts": {"prompts": n_prompts, "samples": size, "shards": total},
        "files": files,
        "identity": identity(files),
        "wall_time_s": 0.0,
    }
    storage.write_json(manifest, folder / "manifest.json")


def write_eval(workdir: Path, size: int) -> None:
    """A small eval of round 0 (32 held-out prompts, greedy and 2 samples each), so that `report` has a round."""
    import numpy as np
    import pyarrow as pa

    from raft_data import storage
    from raft_data.stages.evaluate import eval_metrics, round_rewards
    from raft_data.storage import schemas
    from raft_data.storage.manifests import identity

    cfg = bench_config(workdir, size)
    rdir = storage.round_dir(cfg, 0)
    folder = rdir / storage.STAGE_FOLDERS["eval"]
    storage.remove_tree(folder)
    chain = Chain(REVIEWS, seed=1)
    samples, prompts = shard_table(chain, 10**9, 32)
    rows = samples.slice(0, 32 * 3)
    n = rows.num_rows
    rng = np.random.default_rng(1)
    sampled = np.arange(n) % 3 != 0
    logp = np.where(sampled, -rng.uniform(20, 60, n), np.nan)
    table = pa.table(
        {
            "prompt_id": rows["prompt_id"],
            "prompt": rows["prompt"],
            "kind": pa.array(np.where(sampled, "sampled", "greedy").tolist()),
            "sample_idx": pa.array(np.arange(n) % 3, pa.int32()),
            "completion": rows["completion"],
            "n_tokens": rows["n_tokens"],
            "truncated": rows["truncated"],
            "reward": pa.array(keywords(rows["prompt"].to_pylist(), rows["completion"].to_pylist())),
            "second_reward": pa.nulls(n, pa.float64()),
            "logp": pa.array(logp, from_pandas=True),
            "ref_logp": pa.array(np.where(sampled, logp - rng.uniform(0, 5, n), np.nan), from_pandas=True),
            "n_scored": pa.array(np.where(sampled, rows["n_tokens"].to_numpy(), 0).astype(np.int32), mask=~sampled),
            "entropy_sum": pa.array(np.where(sampled, rng.uniform(50, 150, n), np.nan), from_pandas=True),
            "reference_logp": pa.nulls(n, pa.float64()),
            "reference_tokens": pa.nulls(n, pa.int32()),
        },
        schema=schemas.EVAL_COMPLETIONS,
    )
    path = folder / storage.shard_name(0, 1)
    storage.write_parquet(table, path, schemas.EVAL_COMPLETIONS)
    storage.mark_done(path, n)
    metrics = eval_metrics(cfg, table, prompts, None, False) | round_rewards(rdir)
    refs = {}
    for label, stage in (("selected", "select"), ("scores", "score")):
        refs[label] = storage.input_ref(
            rdir / storage.STAGE_FOLDERS[stage], storage.read_manifest(rdir / storage.STAGE_FOLDERS[stage], stage, 0)
        )
    files = storage.inventory(folder)
    manifest = {
        "stage": "eval",
        "round": 0,
        "config_hash": "bench-scale",
        "config": {},
        "inputs": {"model": {"path": "unused", "identity": "bench"}, **refs},
        "counts": {"prompts": 32, "completions": n, "shards": 1},
        "evaluated": "round 0",
        "metrics": metrics,
        "files": files,
        "identity": identity(files),
        "wall_time_s": 0.0,
    }
    storage.write_json(manifest, folder / "manifest.json")


# ---------------------------------------------------------------------------------------------------------------------
# The measurements, each run in its own process (`--worker NAME`)


def listed_files(cfg) -> list[Path]:
    """Every file the experiment's manifests list: what `status --verify` hashes."""
    from raft_data import storage

    out = []
    for folder in storage.stage_folders(storage.experiment_dir(cfg)):
        out += [folder / name for name in sorted(storage.read_json(folder / "manifest.json")["files"])]
    return out


def evict(paths: list[Path]) -> None:
    """Drop the files from this machine's page cache, so that the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class SpillWatch:
    """The largest number of bytes in a folder while it is watched (DuckDB's temp files)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self.done = folder, 0, threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def size(self) -> int:
        total = 0
        for dirpath, _, names in os.walk(self.folder):
            for name in names:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    def watch(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.size())

    def __enter__(self) -> SpillWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def quiet():
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def run_score(cfg, size: int, reward: str, shards: int | None) -> dict:
    from raft_data import storage
    from raft_data.stages.score import score

    cfg.score.reward = reward
    with quiet():
        if shards is None:
            score(cfg, 0)
            return {"rows": size}
        for i in range(shards):  # what a `--shard i` worker runs
            score(cfg, 0, shard=i)
    folder = storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS["score"]
    return {"rows": sum(storage.read_json(p)["rows"] for p in folder.glob("shard-*.done")), "shards": shards}


def set_strategy(cfg, strategy: str) -> None:
    for key, value in {"strategy": strategy, **STRATEGY_SETTINGS.get(strategy, {})}.items():
        setattr(cfg.select, key, value)


def run_select(cfg, size: int, strategy: str) -> dict:
    from raft_data.stages.select import select

    set_strategy(cfg, strategy)
    with SpillWatch(Path(cfg.select.temp_directory)) as spill, quiet():
        manifest = select(cfg, 0)
    return {"rows": manifest["counts"]["selected"], "spilled_mb": spill.peak / 2**20}


# Where the select stage's time goes: the functions it calls, in the order it calls them, and what each does.
SELECT_STEPS = {
    "pool_manifests": "inputs checked: sizes, SHA-256, lineage",
    "begin_stage": "stage ritual: config hash, folder, record",
    "connect": "DuckDB views over the shards",
    "define_views": "settings, pool and guard views",
    "run_query": "the strategy's query, to Arrow",
    "check_selected": "data tests",
    "dropped_counts": "rows each guard dropped",
    "acceptance_by_level": "acceptance by level",
    "write_parquet": "the shard written (pyarrow, fsync)",
    "dataset_card": "the dataset card",
    "finish_stage": "manifest: output checksum, versions",
    "publish_folder": "rename into place",
}


def run_select_steps(cfg, size: int) -> dict:
    """best_per_prompt once under cProfile: the cumulative seconds of each step of SELECT_STEPS."""
    import cProfile
    import pstats

    from raft_data.stages.select import select

    set_strategy(cfg, "best_per_prompt")
    profile = cProfile.Profile()
    start = time.perf_counter()
    with quiet():
        profile.runcall(select, cfg, 0)
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, primitive calls, own s, cumulative s, callers)
    steps = {name: 0.0 for name in SELECT_STEPS}
    for (path, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in steps and "raft_data" in path:
            steps[name] += cumulative
    steps["other"] = total - sum(steps.values())
    return {"steps": steps, "profiled_s": total}


# The bare DuckDB query for best-of-K, two ways, each from the same files to a Parquet file: the plain SQL of the
# best row per prompt (a join on the keys, a window) and the fastest form found (`docs/selection.md`): scores paired
# with samples by position, `arg_max` over the row.
BARE_QUERIES = {
    "duckdb_qualify": """
        select s.prompt_id, s.sample_idx, s.prompt, s.completion, c.reward, s.n_tokens, s.truncated, s.source, s.round
        from read_parquet($samples) as s
        join read_parquet($scores) as c on s.prompt_id = c.prompt_id and s.sample_idx = c.sample_idx
        qualify row_number() over (partition by s.prompt_id order by c.reward desc, s.sample_idx) = 1
        order by s.prompt_id
    """,
    "duckdb_argmax": """
        with scored as (
            select s.prompt_id, s.sample_idx, s.prompt, s.completion, c.reward, s.n_tokens, s.truncated, s.source,
                s.round
            from (
                select prompt_id, sample_idx, prompt, completion, n_tokens, truncated, source, round
                from read_parquet($samples)
            ) as s
            positional join (select reward from read_parquet($scores)) as c
        ),
        best as (
            select arg_max(scored, (scored.reward, -scored.sample_idx)) as b from scored group by prompt_id
        )
        select b.prompt_id, b.sample_idx, b.prompt, b.completion, b.reward, b.n_tokens, b.truncated, b.source, b.round
        from best
        order by b.prompt_id
    """,
}


def run_bare(cfg, size: int, name: str) -> dict:
    import duckdb

    from raft_data import storage
    from raft_data.selection.engine import engine_settings

    rdir = storage.round_dir(cfg, 0)
    out = str(Path(cfg.experiment.output_root).parent / f"{name}.parquet").replace("'", "''")
    con = duckdb.connect(config=engine_settings(cfg))
    params = {
        "samples": [str(p) for p in storage.shard_files(rdir / "samples")],
        "scores": [str(p) for p in storage.shard_files(rdir / "scores")],
    }
    with SpillWatch(Path(cfg.select.temp_directory)) as spill:
        # COPY takes no parameter for its target: the path is this bench's own, quoted
        con.execute(f"copy ({BARE_QUERIES[name]}) to '{out}' (format parquet)", params)
    rows = con.sql(f"select count(*) from read_parquet('{out}')").fetchall()[0][0]
    return {"rows": rows, "spilled_mb": spill.peak / 2**20}


def run_verify(cfg, size: int) -> dict:
    from raft_data.tools.status import verify_experiment

    problems = verify_experiment(cfg)
    if problems:
        raise SystemExit(f"verify found problems: {problems[0]}")
    return {"files": len(listed_files(cfg))}


def run_read_once(cfg, size: int) -> dict:
    buffer = bytearray(1 << 20)
    total = 0
    for path in listed_files(cfg):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return {"mb": total / 2**20}


def run_inspect(cfg, size: int) -> dict:
    from raft_data.tools.inspect import inspect

    return {"lines": len(inspect(cfg, 0, n_examples=3).splitlines())}


def run_report(cfg, size: int) -> dict:
    from raft_data.report import write_report

    with quiet():
        path = write_report(cfg)
    return {"kb": path.stat().st_size / 1024}


def run_sft_load(cfg, size: int) -> dict:
    from raft_data import storage
    from raft_sft.train import load_dataset_column, load_selected, mark_eos

    files = storage.shard_files(storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS["select"])
    dataset = mark_eos(load_selected(files), cfg.generate.stop)
    ids = load_dataset_column(files, "prompt_id")
    assert len(ids) == len(dataset)
    return {"rows": len(dataset)}


def strategies() -> list[str]:
    from raft_data.selection.engine import strategies as names

    return [s for s in names() if s != "custom"]


MEASURES = {
    "score_vader": lambda cfg, size, shards: run_score(cfg, size, "vader", shards),
    "score_python": lambda cfg, size, shards: run_score(cfg, size, PYTHON_REWARD, None),
    "duckdb_qualify": lambda cfg, size, shards: run_bare(cfg, size, "duckdb_qualify"),
    "duckdb_argmax": lambda cfg, size, shards: run_bare(cfg, size, "duckdb_argmax"),
    "select_steps": lambda cfg, size, shards: run_select_steps(cfg, size),
    "verify": lambda cfg, size, shards: run_verify(cfg, size),
    "verify_cold": lambda cfg, size, shards: run_verify(cfg, size),
    "read_once": lambda cfg, size, shards: run_read_once(cfg, size),
    "read_once_cold": lambda cfg, size, shards: run_read_once(cfg, size),
    "inspect": lambda cfg, size, shards: run_inspect(cfg, size),
    "report": lambda cfg, size, shards: run_report(cfg, size),
    "sft_load": lambda cfg, size, shards: run_sft_load(cfg, size),
}
# imported before the clock starts: the timings are of the work, not of Python start-up
IMPORTS = {
    "score": ["raft_data.stages.score", "vaderSentiment.vaderSentiment", "bench.scale"],
    "select": ["raft_data.stages.select", "cProfile", "pstats"],
    "duckdb": ["duckdb", "raft_data.selection.engine"],
    "verify": ["raft_data.tools.status"],
    "read": ["raft_data.storage"],
    "inspect": ["raft_data.tools.inspect"],
    "report": ["raft_data.report", "matplotlib.pyplot", "raft_data.stages.evaluate"],
    "sft": ["raft_sft.train", "datasets"],
}


def cpu_seconds() -> float:
    """CPU seconds of this process, all its threads."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of this process. Not getrusage's ru_maxrss: after fork and exec that keeps
    the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(name: str, workdir: Path, size: int, shards: int | None) -> None:
    import importlib

    if name.startswith("select_") and name != "select_steps":
        strategy = name.removeprefix("select_")
        measure = lambda cfg, size, shards: run_select(cfg, size, strategy)  # noqa: E731
    else:
        measure = MEASURES[name]
    for module in IMPORTS.get(name.split("_")[0], []):
        importlib.import_module(module)
    if name == "report":
        import matplotlib

        matplotlib.use("Agg")
    cfg = bench_config(workdir, size)
    if name.endswith("_cold"):
        evict(listed_files(cfg))
    start_rss = memory_mb("VmRSS")
    load = os.getloadavg()[0]
    cpu = cpu_seconds()
    start = time.perf_counter()
    result = measure(cfg, size, shards)
    result["seconds"] = time.perf_counter() - start
    result["cpu_s"] = cpu_seconds() - cpu
    result["peak_rss_mb"] = memory_mb("VmHWM")
    result["start_rss_mb"] = start_rss
    result["load"] = load
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------------
# The driver


def run_worker(name: str, args: argparse.Namespace, size: int, shards: int | None = None) -> dict:
    cache = args.workdir / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_DATASETS_CACHE": str(cache),  # an empty cache: load_selected converts the Parquet files every time
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }
    cmd = [sys.executable, "-m", "bench.scale", "--worker", name, "--workdir", str(args.workdir), "--sizes", str(size)]
    if shards is not None:
        cmd += ["--score-shards", str(shards)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} at {size:,} samples failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_results(workdir: Path) -> list[dict]:
    path = workdir / "results.json"
    return json.loads(path.read_text()) if path.exists() else []


def save_result(workdir: Path, entry: dict, fresh: set) -> None:
    """Keep each run; a measurement taken again replaces that (size, stage)'s earlier runs."""
    key = (entry["size"], entry["stage"])
    results = [r for r in load_results(workdir) if (r["size"], r["stage"]) != key or key in fresh]
    fresh.add(key)
    (workdir / "results.json").write_text(json.dumps([*results, entry], indent=1) + "\n")


def clear(cfg, stage: str) -> None:
    from raft_data import storage

    storage.remove_tree(storage.round_dir(cfg, 0) / storage.STAGE_FOLDERS[stage])


def vader_rate(workdir: Path) -> float | None:
    """Samples per second of VADER scoring at the largest size scored whole so far."""
    runs = [r for r in load_results(workdir) if r["stage"] == "score_vader" and "shards" not in r]
    if not runs:
        return None
    size = max(r["size"] for r in runs)
    return size / statistics.median(r["seconds"] for r in runs if r["size"] == size)


def measure_size(args: argparse.Namespace, size: int, fresh: set) -> None:
    from raft_data import storage

    wanted = set(args.only or [])
    reps = args.reps if size < args.one_run_from else 1
    cfg = bench_config(args.workdir, size)
    rdir = storage.round_dir(cfg, 0)
    start = time.perf_counter()
    make_round(args.workdir, size)
    print(
        f"\n{size:,} samples ({size // K:,} prompts x K={K}, {n_shards(size)} shards): round made or found in "
        f"{time.perf_counter() - start:.0f}s",
        flush=True,
    )

    def measure(names: list[str], before=None, shards: int | None = None, times: int = reps) -> None:
        names = [n for n in names if not wanted or n in wanted]
        for rep in range(times if names else 0):
            for name in names:  # interleaved, so that a noisy neighbour hurts each alike
                if before is not None:
                    before(name)
                result = run_worker(name, args, size, shards)
                save_result(args.workdir, {"size": size, "stage": name, "rep": rep, **result}, fresh)
                shown = ("seconds", "peak_rss_mb", "start_rss_mb", "load", "steps")
                extra = ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k not in shown
                )
                print(
                    f"  {name:26s} rep {rep}: {result['seconds']:8.2f}s  peak RSS {result['peak_rss_mb']:6.0f} MB"
                    f"  load {result['load']:.1f}  ({extra})",
                    flush=True,
                )

    # VADER on every shard, unless that would take longer than the budget at the rate of a smaller size: then on the
    # first quarter of the shards, as `--shard i` workers, and the time per sample is theirs
    shards = None
    rate = vader_rate(args.workdir)
    if (not wanted or "score_vader" in wanted) and rate and size / rate > args.score_budget_s:
        shards = max(1, n_shards(size) // 4)
        print(
            f"  score_vader: {size / rate / 60:.0f} min expected at {rate:.0f} samples/s, over the budget; scoring "
            f"the first {shards} of {n_shards(size)} shards",
            flush=True,
        )
    measure(["score_vader"], before=lambda name: clear(cfg, "score"), shards=shards)
    measure(["score_python"], before=lambda name: clear(cfg, "score"))
    if not (rdir / "scores" / "manifest.json").exists():
        clear(cfg, "score")
        run_worker("score_python", args, size)
    # every strategy; then best_per_prompt beside the bare queries, as many times at every size (their ratio is a
    # goal), last, so that selected/ holds best_per_prompt
    measure([f"select_{s}" for s in strategies() if s != "best_per_prompt"], before=lambda name: clear(cfg, "select"))
    trio = ["duckdb_qualify", "duckdb_argmax", "select_best_per_prompt"]
    measure(trio, before=lambda name: clear(cfg, "select"), times=args.reps)
    measure(["select_steps"], before=lambda name: clear(cfg, "select"), times=1)
    if wanted and not wanted & {"select_best_per_prompt", "select_steps"}:
        clear(cfg, "select")
        run_worker("select_best_per_prompt", args, size)
    write_eval(args.workdir, size)
    measure(["read_once", "verify", "read_once_cold", "verify_cold"])
    measure(["inspect", "report", "sft_load"])


# ---------------------------------------------------------------------------------------------------------------------
# Tables and the plot

ORDER = ["score_vader", "score_python", "duckdb_qualify", "duckdb_argmax", "select_best_per_prompt"]
AFTER = ["read_once", "verify", "read_once_cold", "verify_cold", "inspect", "report", "sft_load"]
LABELS = {
    "duckdb_qualify": "bare DuckDB: join + qualify row_number",
    "duckdb_argmax": "bare DuckDB: positional join + arg_max",
    "read_once": "read the listed files once",
    "verify": "status --verify",
    "read_once_cold": "read once, cold cache",
    "verify_cold": "status --verify, cold cache",
    "sft_load": "load selected/ for SFT",
}


def summary(results: list[dict]) -> tuple[list[int], list[str], dict]:
    """Sizes, stages in order, and {(stage, size): (median s, median CPU s, max peak RSS MB, s per sample, runs)}."""
    results = [r for r in results if r["stage"] != "select_steps"]
    sizes = sorted({r["size"] for r in results})
    found = {r["stage"] for r in results}
    stages = [s for s in ORDER if s in found]
    stages += sorted(s for s in found if s.startswith("select_") and s not in stages)
    stages += [s for s in AFTER if s in found]
    cells = {}
    for stage in stages:
        for size in sizes:
            runs = [r for r in results if r["stage"] == stage and r["size"] == size]
            if runs:
                seconds = statistics.median(r["seconds"] for r in runs)
                cpu = statistics.median(r["cpu_s"] for r in runs)
                rows = runs[0].get("rows", size) if stage.startswith("score") else size
                cells[stage, size] = (seconds, cpu, max(r["peak_rss_mb"] for r in runs), seconds / rows, runs)
    return sizes, stages, cells


def size_label(size: int) -> str:
    return f"10^{len(str(size)) - 1}" if str(size).strip("0") == "1" else f"{size:,}"


def tables(results: list[dict]) -> str:
    sizes, stages, cells = summary(results)
    head = "| stage | " + " | ".join(size_label(s) for s in sizes) + " |"
    sep = "| --- |" + " ---: |" * len(sizes)

    def table(title: str, cell) -> list[str]:
        lines = [title, "", head, sep]
        for stage in stages:
            row = [cell(cells[stage, s], s) if (stage, s) in cells else "" for s in sizes]
            lines.append(f"| {stage} | " + " | ".join(row) + " |")
        return [*lines, ""]

    def wall(c, size) -> str:
        partial = "shards" in c[4][0]
        return f"{c[3] * size:.3g}*" if partial else f"{c[0]:.3g}"

    out = table(
        "Wall time, s (median of the runs; *: the first shards only, their time per sample x all samples)", wall
    )
    out += table("Time per sample, µs", lambda c, size: f"{c[3] * 1e6:.3g}")
    out += table("Peak RSS, MB (the largest of the runs)", lambda c, size: f"{c[2]:.0f}")
    out += table("CPU time, s (median; all threads of the process)", lambda c, size: f"{c[1]:.3g}")
    spill_rows = []
    for stage in stages:
        row = []
        for size in sizes:
            runs = [r for r in results if r["stage"] == stage and r["size"] == size and "spilled_mb" in r]
            row.append(f"{max(r['spilled_mb'] for r in runs):.0f}" if runs else "")
        if any(row):
            spill_rows.append(f"| {stage} | " + " | ".join(row) + " |")
    if spill_rows:
        out += [f"Spilled to select.temp_directory, MB (memory_limit {MEMORY_LIMIT}; the largest of the runs)", ""]
        out += [head, sep, *spill_rows, ""]
    out += ["Ratios of the medians (wall time; CPU time in brackets)", "", head.replace("stage", "ratio"), sep]
    for label, a, b in (
        ("select best_per_prompt / bare arg_max", "select_best_per_prompt", "duckdb_argmax"),
        ("select best_per_prompt / bare qualify", "select_best_per_prompt", "duckdb_qualify"),
        ("status --verify / read once", "verify", "read_once"),
        ("status --verify / read once, cold cache", "verify_cold", "read_once_cold"),
    ):
        row = [
            f"{cells[a, s][0] / cells[b, s][0]:.2f} ({cells[a, s][1] / cells[b, s][1]:.2f})"
            if (a, s) in cells and (b, s) in cells
            else ""
            for s in sizes
        ]
        out.append(f"| {label} | " + " | ".join(row) + " |")
    steps = [r for r in results if r["stage"] == "select_steps"]
    if steps:
        out += ["", "Where select (best_per_prompt) spends its time, s (one run under cProfile)", "", head, sep]
        by_size = {r["size"]: r for r in steps}
        for step in [*SELECT_STEPS, "other"]:
            row = [f"{by_size[s]['steps'][step]:.3g}" if s in by_size else "" for s in sizes]
            label = f"{step}: {SELECT_STEPS[step]}" if step in SELECT_STEPS else "other"
            out.append(f"| {label} | " + " | ".join(row) + " |")
        total = [f"{by_size[s]['profiled_s']:.3g}" if s in by_size else "" for s in sizes]
        out.append("| total | " + " | ".join(total) + " |")
    return "\n".join(out)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, stages, cells = summary(results)
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5))
    colors = plt.get_cmap("tab20").colors
    markers = "osv^D<>pP*Xhd"
    for i, stage in enumerate(stages):
        xs = [s for s in sizes if (stage, s) in cells]
        style = {
            "color": colors[i % len(colors)],
            "marker": markers[i % len(markers)],
            "label": LABELS.get(stage, stage),
        }
        style["linestyle"] = "--" if stage.startswith(("duckdb", "read_once")) else "-"
        axes[0].plot(xs, [cells[stage, s][3] * s for s in xs], **style)
        axes[1].plot(xs, [cells[stage, s][3] * 1e6 for s in xs], **style)
        axes[2].plot(xs, [cells[stage, s][2] for s in xs], **style)
    titles = ("Wall time (s)", "Time per sample (µs)", "Peak RSS (MB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples in the round")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[2].axhline(953.7, color="grey", linestyle=":", linewidth=1)
    axes[2].annotate(f"select.memory_limit {MEMORY_LIMIT}", (sizes[0], 953.7), fontsize=8, va="bottom")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"Cost of each stage against the size of a round (K={K}, 2-core machine)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--reps", type=int, default=3, help="runs per measurement below --one-run-from samples")
    parser.add_argument("--one-run-from", type=int, default=10_000_000)
    parser.add_argument("--score-budget-s", type=float, default=2400, help="longest VADER score run (else a subset)")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="only these measurements (e.g. select_threshold)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/raft-bench-scale"))
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "scale_curves.png")
    parser.add_argument("--table", action="store_true", help="print the tables and plot results.json, measure nothing")
    parser.add_argument("--keep", action="store_true", help="keep each size's round (default: deleted when measured)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--score-shards", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.workdir, args.sizes[0], args.score_shards)
        return
    if not args.table:
        if not REVIEWS.exists():
            raise SystemExit(f"{REVIEWS} is missing: run `make setup` first")
        args.workdir.mkdir(parents=True, exist_ok=True)
        fresh: set = set()
        for size in sorted(args.sizes):
            measure_size(args, size, fresh)
            if not args.keep:
                shutil.rmtree(size_dir(args.workdir, size), ignore_errors=True)
    results = load_results(args.workdir)
    print("\n" + tables(results))
    plot(results, args.plot)
    print(f"\nplot: {args.plot}; every run: {args.workdir / 'results.json'}")


if __name__ == "__main__":
    main()
