"""Eval wall time: `measure` as the eval stage calls it now (one load of the evaluated model; greedy and sampled
completions from one `generate` call per batch; its log-probabilities from the same load; a round reads the base
model's perplexity of the reference texts from the baseline), against the same work done as eval first did it (a
load and a pass per kind of completion, another load for the log-probabilities, and the base model's perplexity
recomputed every round).

The evaluated models are the base model (the baseline eval) and a second model folder (a round's eval): by default
a copy of the base model with every weight moved by seeded noise, so sampling and KL are a round's, not zero.
Both ways run on the same prompts with the same seed; their metrics are printed side by side (greedy completions
are the same both ways; sampled ones are draws from the same distribution with other random streams, so the
metrics agree up to sampling noise).

Run as:
    python -m bench.eval                                              # pipelines/imdb_positive.yaml as committed
    python -m bench.eval --model runs/imdb_positive/round-0000/model --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from raft_data.backends import BACKENDS
from raft_data.backends.transformers import AUTO_CPU_BATCH
from raft_data.config import Config, load_config
from raft_data.data.prompts import eval_prompts
from raft_data.models.loading import load_tokenizer_and_model, resolve_device
from raft_data.models.logprobs import completion_token_ids, ended_on_eos, perplexity, sequence_logprobs
from raft_data.rewards.loading import configured_reward
from raft_data.stages.evaluate import eval_completions_pass, eval_seed, measure


def moved_copy(base: str, cfg: Config, dest: Path, scale: float = 0.002) -> str:
    """The base model with seeded Gaussian noise of std `scale` added to every weight: a stand-in round model."""
    import torch

    tokenizer, model = load_tokenizer_and_model(base, cfg.model, "cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return str(dest)


def measure_separate_loads(cfg: Config, model_path: str, is_base: bool, prompts) -> dict[str, float]:
    """The eval's model-side work as it was done before: every pass loads its own model, and a round recomputes
    the base model's perplexity of the reference texts. Returns the drift metrics, to check both ways agree."""
    reward_fn = configured_reward(cfg.score, resolve_device(cfg.score.device))
    max_new = cfg.eval.max_new_tokens or cfg.generate.max_new_tokens
    texts = prompts["prompt"].to_pylist()
    seed = eval_seed(cfg.experiment.seed)
    # batches of prompts as eval first sent them on CPU (batch_size auto is 16 there)
    batch = AUTO_CPU_BATCH if cfg.generate.batch_size == "auto" else cfg.generate.batch_size
    sample_cfg = dataclasses.replace(
        cfg.generate, n_samples=cfg.eval.n_samples, max_new_tokens=max_new, batch_size=batch
    )
    greedy_cfg = dataclasses.replace(sample_cfg, n_samples=1, temperature=0.0)
    out = {}
    for kind, gen_cfg in (("greedy", greedy_cfg), ("sampled", sample_cfg)):
        sample = BACKENDS[cfg.generate.backend](model_path, cfg.model, gen_cfg)
        outs = eval_completions_pass(sample, gen_cfg, texts, seed, kind)
        del sample
        out[kind] = [(p, c) for p, comps in zip(texts, outs, strict=True) for c in comps]
        reward_fn([p for p, _ in out[kind]], [c.text for _, c in out[kind]])
    device = resolve_device(cfg.generate.device)
    tokenizer, model = load_tokenizer_and_model(model_path, cfg.model, device)
    pairs = out["sampled"]
    seqs, starts = completion_token_ids(
        tokenizer,
        [p for p, _ in pairs],
        [c.text for _, c in pairs],
        [ended_on_eos(c.text, c.truncated, cfg.generate.stop) for _, c in pairs],
    )
    size, pad = cfg.eval.batch_size, tokenizer.pad_token_id
    logp, counts, entropies = sequence_logprobs(model, seqs, starts, size, pad, entropy=True)
    refs = prompts["reference"].to_pylist()
    ppl = perplexity(model, tokenizer, refs, size)
    ref_logp, base_ppl = logp, ppl
    if not is_base:
        del model
        _, base = load_tokenizer_and_model(cfg.model.name_or_path, cfg.model, device)
        ref_logp, _ = sequence_logprobs(base, seqs, starts, size, pad)
        base_ppl = perplexity(base, tokenizer, refs, size)
        del base
    diffs = [a - b for a, b in zip(logp, ref_logp, strict=True)]
    return {
        "kl_per_token": sum(diffs) / sum(counts),
        "ppl_ratio": ppl / base_ppl,
        "entropy": sum(entropies) / sum(counts),
    }


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pipelines/imdb_positive.yaml")
    parser.add_argument("--model", default=None, help="the second model folder (default: a moved copy of the base)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each way, interleaved (default 2)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*args.overrides, f"experiment.output_root={tmp}/runs"])
        if cfg.eval.reference_column is None:
            parser.error("the experiment needs eval.reference_column: the bench measures the perplexity ratio")
        prompts = eval_prompts(cfg)
        base = cfg.model.name_or_path
        second = args.model or moved_copy(base, cfg, Path(tmp) / "moved")
        n_sampled = prompts.num_rows * cfg.eval.n_samples
        print(
            f"eval bench: {prompts.num_rows} held-out prompts, 1 greedy + {cfg.eval.n_samples} sampled completions "
            f"each ({n_sampled} scored), {cfg.eval.max_new_tokens or cfg.generate.max_new_tokens} new tokens, "
            f"{len(prompts['reference'].to_pylist())} reference texts; base {base}, second model {second}"
        )
        times: dict[str, list[float]] = {k: [] for k in ("before base", "after base", "before second", "after second")}
        metrics = {}
        for _ in range(args.repeats):
            t, metrics["before base"] = timed(measure_separate_loads, cfg, base, True, prompts)
            times["before base"].append(t)
            t, (_, base_metrics) = timed(measure, cfg, base, True, prompts)
            times["after base"].append(t)
            metrics["after base"] = base_metrics
            t, metrics["before second"] = timed(measure_separate_loads, cfg, second, False, prompts)
            times["before second"].append(t)
            t, (_, metrics["after second"]) = timed(
                measure, cfg, second, False, prompts, base_perplexity=base_metrics["perplexity"]
            )
            times["after second"].append(t)

    print("\n| eval of | before: s (median) | after: s (median) | saved | runs (before / after) |")
    print("|---|---|---|---|---|")
    for which in ("base", "second"):
        b, a = times[f"before {which}"], times[f"after {which}"]
        mb, ma = statistics.median(b), statistics.median(a)
        runs = f"{' '.join(f'{x:.1f}' for x in b)} / {' '.join(f'{x:.1f}' for x in a)}"
        print(f"| {which} model | {mb:.1f} | {ma:.1f} | {mb - ma:.1f} s ({(mb - ma) / mb:.0%}) | {runs} |")
    print("\nthe same metrics both ways (last run):")
    for key in ("kl_per_token", "ppl_ratio", "entropy"):
        print(
            f"  {key}: base {metrics['before base'][key]:.4f} / {metrics['after base'][key]:.4f}, "
            f"second {metrics['before second'][key]:.4f} / {metrics['after second'][key]:.4f}"
        )


if __name__ == "__main__":
    main()
