"""Eval: measure a round's model on held-out prompts that are never trained on, beside the reward of its own data.

Run as:
    raft-data eval --config pipelines/imdb_positive.yaml --round 0
    raft-data eval --config pipelines/imdb_positive.yaml --round 2 eval.n_prompts=64

Round n's eval measures round n's fine-tuned model (`round-NNNN/model/`) and writes `round-NNNN/eval/`:
`completions.parquet` (greedy and sampled completions of a fixed subset of the held-out prompts, with their rewards
and log-probabilities) and `manifest.json` (written last) whose `metrics` hold:

- reward_greedy, reward_sampled: mean reward of greedy and of sampled completions (score.reward);
  second_reward_greedy, second_reward_sampled: the same for eval.second_reward, when set;
- reward_all, reward_best_of_k, reward_selected: mean reward of the round's own samples, of the best of K per
  prompt, and of the selected set (null for the baseline);
- perplexity: of held-out reference text (the column eval.reference_column of the prompts source);
- distinct_1, distinct_2, msttr: diversity of the sampled completions (lower-cased whitespace words);
- mean_tokens, truncation_rate: length of the sampled completions, share stopped by max_new_tokens;
- kl: mean over sampled completions of log p_model(y|x) - log p_base(y|x), a Monte-Carlo estimate of
  KL(model || base) (exact in expectation at temperature 1, top_p 1, top_k 0).

Before round 0's eval, the base model is evaluated the same way into `<experiment>/baseline/eval/`: the
baseline row every round is compared with.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.backends.base import Completion
from raft_data.config import Config
from raft_data.data.prompts import eval_prompts
from raft_data.errors import ConfigError
from raft_data.models.loading import load_tokenizer_and_model, resolve_device
from raft_data.models.logprobs import completion_token_ids, perplexity, sequence_logprobs
from raft_data.rewards.loading import configured_reward, load_reward, reward_values
from raft_data.selection.engine import METRICS_DIR
from raft_data.storage import schemas

ROUND_REWARDS_SQL = METRICS_DIR / "round_rewards.sql"
MSTTR_SEGMENT = 50  # words per segment, the usual choice for mean segmental type-token ratio

# ---------------------------------------------------------------------------------------------------------------------
# Diversity: plain functions of the completion texts.


def words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (n-grams never cross two texts); 0.0 when there are none."""
    grams = [tuple(ws[i : i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def msttr(texts: list[str], segment: int = MSTTR_SEGMENT) -> float:
    """Mean segmental type-token ratio: the texts' words in one stream, cut into full segments of `segment` words,
    the mean of each segment's distinct/total. With less than one full segment, the type-token ratio of all words."""
    stream = [w for t in texts for w in words(t)]
    if not stream:
        return 0.0
    if len(stream) < segment:
        return len(set(stream)) / len(stream)
    segments = [stream[i : i + segment] for i in range(0, len(stream) - segment + 1, segment)]
    return float(np.mean([len(set(s)) / segment for s in segments]))


# ---------------------------------------------------------------------------------------------------------------------
# Inputs: the reward of a round's own data, and the eval seed.


def round_rewards(rdir: Path) -> dict[str, Any]:
    """Mean reward of all samples, of the best of K per prompt and of the selected set of a finished round."""
    con = duckdb.connect()
    scores = storage.shard_files(rdir / storage.STAGE_FOLDERS["score"])
    selected = storage.shard_files(rdir / storage.STAGE_FOLDERS["select"])
    con.read_parquet([str(p) for p in scores]).create_view("raw_scores")
    con.read_parquet([str(p) for p in selected]).create_view("raw_selected")
    cursor = con.execute(ROUND_REWARDS_SQL.read_text(encoding="utf-8"))
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchall()[0], strict=True))


def eval_seed(seed: int) -> int:
    """One sampling seed for every evaluation of an experiment, so rounds differ only by their model."""
    return int(hashlib.sha256(f"{seed}:eval".encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------------------------------------------------------------
# The stage.


def measure(cfg: Config, model_path: str, is_base: bool, prompts: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    """Generate greedy and sampled completions with `model_path` and compute every model-side metric."""
    reward_fn = configured_reward(cfg.score, resolve_device(cfg.score.device))
    second_fn = load_reward(cfg.eval.second_reward)[1] if cfg.eval.second_reward else None
    max_new = cfg.eval.max_new_tokens or cfg.generate.max_new_tokens
    texts, ids = prompts["prompt"].to_pylist(), prompts["prompt_id"].to_pylist()
    seed = eval_seed(cfg.experiment.seed)
    sample_cfg = dataclasses.replace(cfg.generate, n_samples=cfg.eval.n_samples, max_new_tokens=max_new)
    greedy_cfg = dataclasses.replace(sample_cfg, n_samples=1, temperature=0.0)

    rows: dict[str, list] = {name: [] for name in schemas.EVAL_COMPLETIONS.names}
    completions: list[Completion] = []
    for kind, gen_cfg in (("greedy", greedy_cfg), ("sampled", sample_cfg)):
        sample = BACKENDS[cfg.generate.backend](model_path, cfg.model, gen_cfg)
        outs: list[list[Completion]] = []
        for lo in tqdm(range(0, len(texts), gen_cfg.batch_size), desc=f"eval {kind}", unit="batch"):
            outs += sample(texts[lo : lo + gen_cfg.batch_size], seed + lo)
        del sample
        for pid, prompt, comps in zip(ids, texts, outs, strict=True):
            for k, c in enumerate(comps):
                rows["prompt_id"].append(pid)
                rows["prompt"].append(prompt)
                rows["kind"].append(kind)
                rows["sample_idx"].append(k)
                rows["completion"].append(c.text)
                rows["n_tokens"].append(c.n_tokens)
                rows["truncated"].append(c.truncated)
                completions.append(c)

    def row(i: int) -> str:
        return f"held-out prompt_id={rows['prompt_id'][i]} ({rows['kind'][i]} completion {rows['sample_idx'][i]})"

    rows["reward"] = reward_fn(rows["prompt"], rows["completion"])
    rows["second_reward"] = (
        reward_values(cfg.eval.second_reward, second_fn, rows["prompt"], rows["completion"], row)
        if second_fn
        else [None] * len(completions)
    )

    # log-probabilities of the sampled completions under the model and the base model: the KL estimate
    sampled = [i for i, kind in enumerate(rows["kind"]) if kind == "sampled"]
    device = resolve_device(cfg.generate.device)
    tokenizer, model = load_tokenizer_and_model(model_path, cfg.model, device)
    seqs, starts = completion_token_ids(
        tokenizer,
        [rows["prompt"][i] for i in sampled],
        [completions[i].text for i in sampled],
        [not completions[i].truncated for i in sampled],
    )
    logp, _ = sequence_logprobs(model, seqs, starts, cfg.eval.batch_size, tokenizer.pad_token_id)
    ppl = None
    if "reference" in prompts.column_names:
        ppl = perplexity(model, tokenizer, prompts["reference"].to_pylist(), cfg.eval.batch_size)
    if is_base:
        ref_logp = logp
    else:
        del model
        _, base = load_tokenizer_and_model(cfg.model.name_or_path, cfg.model, device)
        ref_logp, _ = sequence_logprobs(base, seqs, starts, cfg.eval.batch_size, tokenizer.pad_token_id)
        del base
    rows["logp"] = [None] * len(completions)
    rows["ref_logp"] = [None] * len(completions)
    for j, i in enumerate(sampled):
        rows["logp"][i], rows["ref_logp"][i] = logp[j], ref_logp[j]
    table = pa.table(rows, schema=schemas.EVAL_COMPLETIONS)

    def mean(values: list) -> float | None:
        return float(np.mean(values)) if values else None

    greedy = [i for i, kind in enumerate(rows["kind"]) if kind == "greedy"]
    sampled_texts = [rows["completion"][i] for i in sampled]
    metrics = {
        "reward_greedy": mean([rows["reward"][i] for i in greedy]),
        "reward_sampled": mean([rows["reward"][i] for i in sampled]),
        "second_reward_greedy": mean([rows["second_reward"][i] for i in greedy]) if second_fn else None,
        "second_reward_sampled": mean([rows["second_reward"][i] for i in sampled]) if second_fn else None,
        "perplexity": ppl,
        "distinct_1": distinct_n(sampled_texts, 1),
        "distinct_2": distinct_n(sampled_texts, 2),
        "msttr": msttr(sampled_texts),
        "mean_tokens": mean([rows["n_tokens"][i] for i in sampled]),
        "truncation_rate": mean([float(rows["truncated"][i]) for i in sampled]),
        "kl": mean([a - b for a, b in zip(logp, ref_logp, strict=True)]),
    }
    return table, metrics


def evaluate_model(cfg: Config, round_idx: int | None, force: bool = False) -> dict:
    """Evaluate round `round_idx`'s fine-tuned model, or the base model when `round_idx` is None (the baseline)."""
    if cfg.generate.backend not in BACKENDS:
        raise ConfigError(f"generate.backend={cfg.generate.backend!r} is unknown: choose from {', '.join(BACKENDS)}")
    if round_idx is None:
        folder, lock_dir, manifest_round = storage.baseline_dir(cfg), storage.baseline_dir(cfg).parent, 0
        model_path, model_id, data_rdir = cfg.model.name_or_path, f"base:{cfg.model.name_or_path}", None
    else:
        rdir = storage.round_dir(cfg, round_idx)
        folder, lock_dir, manifest_round, data_rdir = rdir / storage.STAGE_FOLDERS["eval"], rdir, round_idx, rdir
        model_dir = rdir / storage.STAGE_FOLDERS["train"]
        model_manifest = storage.read_manifest(model_dir, "train", round_idx)
        storage.read_verified(rdir / storage.STAGE_FOLDERS["select"], "select", round_idx)
        storage.read_verified(rdir / storage.STAGE_FOLDERS["score"], "score", round_idx)
        model_path, model_id = str(model_dir), f"round-{round_idx:04d}:{model_manifest['config_hash']}"
    stage_cfg = {
        "eval": cfg.eval.__dict__,
        "model": {**cfg.model.__dict__, "evaluated": model_id},
        "prompts": cfg.prompts.__dict__,
        "generate": {k: v for k, v in cfg.generate.__dict__.items() if k not in ("n_shards", "n_samples")},
        "score": cfg.score.__dict__,
        "seed": cfg.experiment.seed,
        "round": "baseline" if round_idx is None else round_idx,
    }
    label = "baseline" if round_idx is None else f"round {round_idx}"
    with storage.stage("eval", folder, stage_cfg, manifest_round, force, in_place=False, lock_dir=lock_dir) as run:
        if run.done:
            return run.manifest
        prompts = eval_prompts(cfg)
        table, metrics = measure(cfg, model_path, round_idx is None, prompts)
        data = round_rewards(data_rdir) if data_rdir is not None else {}
        metrics |= {
            "reward_all": data.get("reward_all"),
            "reward_best_of_k": data.get("reward_best_of_k"),
            "reward_selected": data.get("reward_selected"),
        }
        tmp = storage.tmp_folder(folder)
        storage.write_parquet(table, tmp / "completions.parquet", schemas.EVAL_COMPLETIONS)
        manifest = storage.finish_stage(
            run,
            "eval",
            manifest_round,
            inputs={"model": model_id, "prompts": cfg.prompts.path},
            counts={"prompts": prompts.num_rows, "completions": table.num_rows},
            extra={"evaluated": label, "model_path": model_path, "metrics": metrics},
            folder=tmp,
        )
        storage.publish_folder(folder)
        print(f"eval {label}: {format_metrics(metrics)}")
        return manifest


def evaluate(cfg: Config, round_idx: int, force: bool = False) -> dict:
    """Run the eval stage of one round; before round 0 the base model is evaluated as the baseline."""
    if round_idx == 0:
        evaluate_model(cfg, None, force=force)
    return evaluate_model(cfg, round_idx, force=force)


def format_metrics(m: dict[str, Any]) -> str:
    """One line of the headline metrics; missing ones are left out."""
    parts = [
        ("held-out reward", "reward_sampled", "{:.3f}"),
        ("greedy", "reward_greedy", "{:.3f}"),
        ("second", "second_reward_sampled", "{:.3f}"),
        ("all", "reward_all", "{:.3f}"),
        ("best-of-K", "reward_best_of_k", "{:.3f}"),
        ("selected", "reward_selected", "{:.3f}"),
        ("ppl", "perplexity", "{:.1f}"),
        ("distinct-2", "distinct_2", "{:.3f}"),
        ("kl", "kl", "{:.2f}"),
    ]
    return " | ".join(f"{name} {fmt.format(m[key])}" for name, key, fmt in parts if m.get(key) is not None)
