"""Generation backends measured the same way: the round's prompts of an experiment, K samples each, one backend
per process; prints load time, sampling time, generated tokens, tokens/s and peak memory (with the engine's
processes).

Run as (vLLM needs its own environment, `make setup-vllm`; it also has transformers, so both run from there):
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=2 .venv-vllm/bin/python -m bench.backends --backend vllm
    OMP_NUM_THREADS=2 .venv-vllm/bin/python -m bench.backends --backend transformers
    ... --config pipelines/imdb_positive.yaml prompts.n_prompts=32 generate.n_samples=4 generate.max_new_tokens=32
"""

from __future__ import annotations

import argparse
import sys
import time


def peak_rss_gib() -> float:
    """Peak resident memory (VmHWM) of this process plus its live children, e.g. vLLM's engine processes."""
    import psutil

    total = 0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            status = open(f"/proc/{proc.pid}/status", encoding="utf-8").read()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=["transformers", "vllm"])
    parser.add_argument("--config", default="pipelines/imdb_positive.yaml")
    parser.add_argument("--seed", type=int, default=1234, help="the sampling seed")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()

    from raft_data.backends import BACKENDS
    from raft_data.config import load_config
    from raft_data.data.prompts import draw_round_prompts

    cfg = load_config(args.config, args.overrides)
    prompts = draw_round_prompts(cfg.prompts, cfg.experiment.seed, 0)["prompt"].to_pylist()

    start = time.perf_counter()
    sample = BACKENDS[args.backend](cfg.model.name_or_path, cfg.model, cfg.generate)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    completions = sample(prompts, args.seed)
    sample_s = time.perf_counter() - start

    n_tokens = sum(c.n_tokens for comps in completions for c in comps)
    truncated = sum(c.truncated for comps in completions for c in comps)
    n_samples = sum(len(comps) for comps in completions)
    print(
        "| backend | prompts b | K | max new tokens | load s | sample s | generated tokens | tokens/s | truncated "
        "| peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.backend} | {len(prompts)} | {cfg.generate.n_samples} | {cfg.generate.max_new_tokens} "
        f"| {load_s:.1f} | {sample_s:.1f} | {n_tokens} | {n_tokens / sample_s:.0f} | {truncated}/{n_samples} "
        f"| {peak_rss_gib():.2f} |"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
