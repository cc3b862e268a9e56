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
  ppl_ratio: that perplexity over the base model's (1.0 for the baseline; the base value is read from the
  baseline manifest when it measured the same texts, else computed);
- distinct_1, distinct_2, msttr: diversity of the sampled completions (lower-cased whitespace words);
- mean_tokens, truncation_rate: length of the sampled completions, share stopped by max_new_tokens;
- kl: mean over sampled completions of log p_model(y|x) - log p_base(y|x), a Monte-Carlo estimate of
  KL(model || base) per sequence (exact in expectation at temperature 1, top_p 1, top_k 0);
  kl_per_token: the same sum divided by the completion tokens scored (so a shorter completion is not "closer");
- entropy: mean entropy (nats per token) of the model's next-token distribution at the sampled completions'
  positions, from the same forward pass as their log-probabilities: it falls when the model collapses;
- reward_sampled_se, second_reward_sampled_se, distinct_2_se: their standard errors over held-out prompts
  (delete-one-prompt jackknife: a prompt's K samples are not independent of each other). The report counts a fall
  of the second reward or of distinct-2 between two rounds only when it is larger than twice the two standard
  errors combined.

With the transformers backend the evaluated model is loaded once, and one `generate` call per batch of prompts
draws both its greedy and its sampled completions (each row with its own random stream, so a row's completion
does not depend on the batch); the same load scores them.

Before round 0's eval, the base model is evaluated the same way into `<experiment>/baseline/eval/`: the
baseline row every round is compared with.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.backends.base import Completion
from raft_data.backends.transformers import prompt_batch_size, transformers_eval_sampler
from raft_data.config import Config, ScoreConfig, derived_seed, prompts_hashed
from raft_data.data.chat import format_prompts
from raft_data.data.prompts import eval_prompts, split_record
from raft_data.errors import ConfigError, DataError
from raft_data.models.loading import load_tokenizer, load_tokenizer_and_model, resolve_device
from raft_data.models.logprobs import (
    completion_token_ids,
    ended_on_eos,
    perplexity,
    reference_logprobs,
    sequence_logprobs,
)
from raft_data.rewards.checkers import extractor, pass_metrics
from raft_data.rewards.code import code_reward, without_majority
from raft_data.rewards.loading import by_task, correctness, load_reward, reward_values, routed_reward, uses_gym
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


def jackknife_se(groups: list[list], statistic) -> float | None:
    """Standard error of `statistic(items)` over groups of items (a held-out prompt's samples), by the delete-one-group
    jackknife: sqrt((g - 1) / g * sum_i (s_-i - mean s_-i)^2), s_-i the statistic without group i. None with fewer
    than two groups."""
    if len(groups) < 2:
        return None
    left_out = [statistic([x for j, g in enumerate(groups) if j != i for x in g]) for i in range(len(groups))]
    g = len(groups)
    return float(np.sqrt((g - 1) / g * np.sum((np.asarray(left_out) - np.mean(left_out)) ** 2)))


def by_prompt(prompt_ids: list, values: list) -> list[list]:
    """`values` grouped by their prompt id, in order of first appearance."""
    groups: dict[Any, list] = {}
    for pid, v in zip(prompt_ids, values, strict=True):
        groups.setdefault(pid, []).append(v)
    return list(groups.values())


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
    return derived_seed(seed, "eval")


# ---------------------------------------------------------------------------------------------------------------------
# The stage.


def chat_texts(cfg: Config, model_path: str, ids: list[str], texts: list[str]) -> list[str]:
    """The prompts through the model's chat template when generate.chat_template is on (as the generate stage
    renders them), else as they are."""
    if not cfg.generate.chat_template:
        return texts
    tokenizer = load_tokenizer(model_path, cfg.model)
    formatted = format_prompts(ids, texts, tokenizer, replace(cfg.generate, max_prompt_tokens=None), None)
    return [t if t is not None else p for t, p in zip(formatted.texts, texts, strict=True)]


def reference_digest(cfg: Config, references: list[str]) -> str:
    """What the base model's perplexity of reference texts depends on: the texts, the base model and its dtype."""
    key = {"model": cfg.model.name_or_path, "dtype": cfg.model.dtype, "texts": references}
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()


def cached_base_perplexity(cfg: Config, prompts: pa.Table) -> float | None:
    """The base model's perplexity of these prompts' reference texts from the baseline manifest, when the baseline
    measured the same texts with the same model; None otherwise (then `measure` computes it)."""
    path = storage.baseline_dir(cfg) / "manifest.json"
    if "reference" not in prompts.column_names or not path.exists():
        return None
    manifest = storage.read_json(path)
    if manifest.get("reference_digest") != reference_digest(cfg, prompts["reference"].to_pylist()):
        return None
    return (manifest.get("metrics") or {}).get("perplexity")


def measure_shard(
    cfg: Config, model_path: str, is_base: bool, prompts: pa.Table, first: int, loaded: dict[str, Any]
) -> pa.Table:
    """One eval shard: greedy and sampled completions of `prompts` (rows first.. of the eval's prompts) with
    `model_path`, their rewards, log-probabilities under the model and the base model, the model's entropy, and the
    log-likelihood of each prompt's reference text. Every figure is per row, so the metrics of the whole eval are
    sums over shards (`eval_metrics`), whichever process ran each. `loaded` keeps what this process loaded (the
    model, the base model, the rewards) for its next shard."""
    if "reward" not in loaded:  # each task's own reward with score.tasks
        device, cache = resolve_device(cfg.score.device), storage.experiment_dir(cfg)
        loaded["reward"] = routed_reward(cfg.score, device, cache)
        loaded["second"] = load_reward(cfg.eval.second_reward)[1] if cfg.eval.second_reward else None
    reward_fn, second_fn = loaded["reward"], loaded["second"]
    max_new = cfg.eval.max_new_tokens or cfg.generate.max_new_tokens
    texts, ids = prompts["prompt"].to_pylist(), prompts["prompt_id"].to_pylist()
    gold = dict(zip(ids, prompts["answer"].to_pylist(), strict=True)) if "answer" in prompts.column_names else {}
    model_texts = chat_texts(cfg, model_path, ids, texts)  # what the model is conditioned on, as in generate
    seed = eval_seed(cfg.experiment.seed)
    sample_cfg = dataclasses.replace(cfg.generate, n_samples=cfg.eval.n_samples, max_new_tokens=max_new)
    greedy_cfg = dataclasses.replace(sample_cfg, n_samples=1, temperature=0.0)

    # The transformers backend samples greedy and sampled completions in one pass, from the one load of the model
    # that also scores them below; other backends run their own engine, a pass per kind, and the model is loaded
    # for log-probabilities only after them.
    device = resolve_device(cfg.generate.device)
    if "model" not in loaded and cfg.generate.backend == "transformers":
        loaded["tokenizer"], loaded["model"] = load_tokenizer_and_model(model_path, cfg.model, device)
    if "model" in loaded:
        by_kind = eval_completions_one_pass(loaded["tokenizer"], loaded["model"], sample_cfg, model_texts, seed, first)
    else:
        by_kind = {}
        for kind, gen_cfg in (("greedy", greedy_cfg), ("sampled", sample_cfg)):
            if kind not in loaded:
                loaded[kind] = BACKENDS[cfg.generate.backend](model_path, cfg.model, gen_cfg)
            by_kind[kind] = eval_completions_pass(loaded[kind], gen_cfg, model_texts, seed + first, kind)
    rows: dict[str, list] = {name: [] for name in schemas.EVAL_COMPLETIONS.names}
    completions: list[Completion] = []
    for kind in ("greedy", "sampled"):
        for pid, prompt, comps in zip(ids, texts, by_kind[kind], strict=True):
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

    task_of = dict(zip(ids, prompts["task"].to_pylist(), strict=True)) if "task" in prompts.column_names else {}
    answers, tasks = [gold.get(p) for p in rows["prompt_id"]], [task_of.get(p) for p in rows["prompt_id"]]
    rows["reward"] = reward_fn(rows["prompt"], rows["completion"], answers, tasks)
    rows["second_reward"] = (
        reward_values(cfg.eval.second_reward, second_fn, rows["prompt"], rows["completion"], row)
        if second_fn
        else [None] * len(completions)
    )

    # Log-probabilities of the sampled completions (conditioned on the prompt text the model saw) under the model
    # and the base model: the KL estimate; the model's next-token entropy comes from the same forward pass.
    sampled = [i for i, kind in enumerate(rows["kind"]) if kind == "sampled"]
    if "model" not in loaded:
        loaded["tokenizer"], loaded["model"] = load_tokenizer_and_model(model_path, cfg.model, device)
    tokenizer, model = loaded["tokenizer"], loaded["model"]
    conditioned = dict(zip(ids, model_texts, strict=True))
    seqs, starts = completion_token_ids(
        tokenizer,
        [conditioned[rows["prompt_id"][i]] for i in sampled],
        [completions[i].text for i in sampled],
        [ended_on_eos(completions[i].text, completions[i].truncated, cfg.generate.stop) for i in sampled],
    )
    batch, pad_id = cfg.eval.batch_size, tokenizer.pad_token_id
    logp, n_scored, entropies = sequence_logprobs(model, seqs, starts, batch, pad_id, entropy=True)
    if is_base:
        ref_logp = logp
    else:
        if "base" not in loaded:
            loaded["base"] = load_tokenizer_and_model(cfg.model.name_or_path, cfg.model, device)[1]
        ref_logp, _ = sequence_logprobs(loaded["base"], seqs, starts, batch, pad_id)
    for name in ("logp", "ref_logp", "n_scored", "entropy_sum", "reference_logp", "reference_tokens"):
        rows[name] = [None] * len(completions)
    for j, i in enumerate(sampled):
        rows["logp"][i], rows["ref_logp"][i] = logp[j], ref_logp[j]
        rows["n_scored"][i], rows["entropy_sum"][i] = n_scored[j], entropies[j]
    if "reference" in prompts.column_names:
        ref_sums, ref_counts = reference_logprobs(model, tokenizer, prompts["reference"].to_pylist(), batch)
        greedy = [i for i, kind in enumerate(rows["kind"]) if kind == "greedy"]
        for j, i in enumerate(greedy):
            rows["reference_logp"][i], rows["reference_tokens"][i] = ref_sums[j], ref_counts[j]
    return pa.table(rows, schema=schemas.EVAL_COMPLETIONS)


def eval_metrics(
    cfg: Config, table: pa.Table, prompts: pa.Table, base_perplexity: float | None, is_base: bool
) -> dict[str, Any]:
    """Every model-side metric of an eval from its rows (all shards): rewards, diversity, length, KL, entropy,
    perplexity and its ratio to the base model's (`base_perplexity`), standard errors, and held-out pass@k."""
    rows = table.to_pydict()
    second = cfg.eval.second_reward is not None

    def mean(values: list) -> float | None:
        return float(np.mean(values)) if values else None

    greedy = [i for i, kind in enumerate(rows["kind"]) if kind == "greedy"]
    sampled = [i for i, kind in enumerate(rows["kind"]) if kind == "sampled"]
    sampled_texts = [rows["completion"][i] for i in sampled]
    log_ratios = [rows["logp"][i] - rows["ref_logp"][i] for i in sampled]
    n_scored = sum(rows["n_scored"][i] for i in sampled)
    ref_tokens = sum(rows["reference_tokens"][i] for i in greedy if rows["reference_tokens"][i] is not None)
    ppl = None
    if "reference" in prompts.column_names:
        if ref_tokens == 0:
            raise DataError("perplexity needs reference texts of at least two tokens")
        ppl = math.exp(-sum(rows["reference_logp"][i] for i in greedy) / ref_tokens)
    base_ppl = ppl if is_base else base_perplexity
    metrics = {
        "reward_greedy": mean([rows["reward"][i] for i in greedy]),
        "reward_sampled": mean([rows["reward"][i] for i in sampled]),
        "second_reward_greedy": mean([rows["second_reward"][i] for i in greedy]) if second else None,
        "second_reward_sampled": mean([rows["second_reward"][i] for i in sampled]) if second else None,
        "perplexity": ppl,
        "distinct_1": distinct_n(sampled_texts, 1),
        "distinct_2": distinct_n(sampled_texts, 2),
        "msttr": msttr(sampled_texts),
        "mean_tokens": mean([rows["n_tokens"][i] for i in sampled]),
        "truncation_rate": mean([float(rows["truncated"][i]) for i in sampled]),
        "kl": mean(log_ratios),
        "kl_per_token": sum(log_ratios) / n_scored if n_scored else None,
        "ppl_ratio": ppl / base_ppl if ppl is not None and base_ppl else None,
        "entropy": sum(rows["entropy_sum"][i] for i in sampled) / n_scored if n_scored else None,
    }
    sampled_ids = [rows["prompt_id"][i] for i in sampled]
    metrics["reward_sampled_se"] = jackknife_se(by_prompt(sampled_ids, [rows["reward"][i] for i in sampled]), mean)
    metrics["second_reward_sampled_se"] = (
        jackknife_se(by_prompt(sampled_ids, [rows["second_reward"][i] for i in sampled]), mean) if second else None
    )
    metrics["distinct_2_se"] = jackknife_se(by_prompt(sampled_ids, sampled_texts), lambda t: distinct_n(t, 2))
    ids = prompts["prompt_id"].to_pylist()
    gold = dict(zip(ids, prompts["answer"].to_pylist(), strict=True)) if "answer" in prompts.column_names else {}
    if gold and uses_checker(cfg):
        levels = dict(zip(ids, prompts["level"].to_pylist(), strict=True)) if "level" in prompts.column_names else {}
        tasks = dict(zip(ids, prompts["task"].to_pylist(), strict=True)) if "task" in prompts.column_names else {}
        metrics["pass_at_k"] = heldout_pass_metrics(cfg, rows, sampled, gold, levels, tasks)
    return metrics


def measure(
    cfg: Config, model_path: str, is_base: bool, prompts: pa.Table, base_perplexity: float | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """An eval of `model_path` on `prompts` in one shard, in this process: its rows and metrics. Without
    `base_perplexity`, a model other than the base measures the base model's perplexity itself."""
    table = measure_shard(cfg, model_path, is_base, prompts, 0, {})
    if not is_base and base_perplexity is None and "reference" in prompts.column_names:
        base_perplexity = measure_perplexity(cfg, cfg.model.name_or_path, prompts)
    return table, eval_metrics(cfg, table, prompts, base_perplexity, is_base)


def base_model_perplexity(cfg: Config, prompts: pa.Table) -> float | None:
    """The base model's perplexity of the eval prompts' reference texts: from the baseline's manifest when it
    measured the same texts, else measured here with the base model (None without reference texts)."""
    if "reference" not in prompts.column_names:
        return None
    cached = cached_base_perplexity(cfg, prompts)
    if cached is not None:
        return cached
    return measure_perplexity(cfg, cfg.model.name_or_path, prompts)


def measure_perplexity(cfg: Config, model_path: str, prompts: pa.Table) -> float:
    """A model's perplexity of the prompts' reference texts."""
    tokenizer, model = load_tokenizer_and_model(model_path, cfg.model, resolve_device(cfg.generate.device))
    return perplexity(model, tokenizer, prompts["reference"].to_pylist(), cfg.eval.batch_size)


def eval_completions_one_pass(tokenizer, model, cfg, texts: list[str], seed: int, first: int = 0) -> dict[str, list]:
    """Greedy and sampled completions of each prompt from one `generate` call per batch of prompts
    (`transformers_eval_sampler`): {"greedy": [[c], ...], "sampled": [[c1..cK], ...]}, in prompt order. `first` is
    the index of the first prompt among all the eval's prompts: each row's random stream depends on it alone."""
    sample = transformers_eval_sampler(tokenizer, model, cfg)
    size = prompt_batch_size(cfg, model, tokenizer, texts, cfg.n_samples + 1)
    out: dict[str, list] = {"greedy": [], "sampled": []}
    for lo in tqdm(range(0, len(texts), size), desc="eval greedy+sampled", unit="batch"):
        for greedy, sampled in sample(texts[lo : lo + size], seed, first=first + lo):
            out["greedy"].append([greedy])
            out["sampled"].append(sampled)
    return out


def eval_completions_pass(sample, cfg, texts: list[str], seed: int, kind: str) -> list[list[Completion]]:
    """One kind of completions (greedy or sampled) from a backend's own engine, a batch of prompts at a time (with
    batch_size auto, all in one call: the engine schedules them itself)."""
    size = cfg.batch_size if isinstance(cfg.batch_size, int) else max(1, len(texts))
    outs: list[list[Completion]] = []
    for lo in tqdm(range(0, len(texts), size), desc=f"eval {kind}", unit="batch"):
        outs += sample(texts[lo : lo + size], seed + lo)
    return outs


def pass_checker(cfg: Config) -> str | None:
    """The reward's component that says pass or fail (`correct`: the checker, or reasoning_gym's full marks; else
    `code_pass`), if any. With score.tasks: `correct` when any task has one."""
    found = {pass_check_of(score) for score in cfg.score.by_task().values()}
    if cfg.score.tasks:
        return "correct" if found - {None} else None
    return found.pop()


def pass_check_of(score: ScoreConfig) -> str | None:
    reward = score.reward
    refs = [reward] if isinstance(reward, str) else [c.get("ref") for c in reward]
    if "correct" in refs or uses_gym(score):
        return "correct"
    return "code_pass" if "code_pass" in refs else None


def uses_checker(cfg: Config) -> bool:
    """The reward has a `correct` (checker or reasoning_gym) or `code_pass` component: held-out pass@k is measured."""
    return pass_checker(cfg) is not None


def heldout_pass_metrics(
    cfg: Config, rows: dict, sampled: list[int], gold: dict, levels: dict, tasks: dict | None = None
) -> dict:
    """pass@k, maj@k and mixed outcomes of the sampled held-out completions (the `correct` checker, or full marks
    from the reasoning_gym family's own), by level (and by task, each with its own checker, with score.tasks); with
    `code_pass`, pass@k and mixed outcomes of the programs (no majority vote: a program has no answer to vote on)."""
    completions = [rows["completion"][i] for i in sampled]
    ids = [rows["prompt_id"][i] for i in sampled]
    tasks = tasks or {}
    scores = cfg.score.by_task()
    kinds = {task: pass_check_of(score) for task, score in scores.items()}

    def check(score: ScoreConfig, kind: str | None, at: list[int]) -> list:
        texts, answers = [completions[i] for i in at], [gold[ids[i]] for i in at]
        if kind is None:  # a task without a checker: no pass or fail
            return [(None, None)] * len(at)
        flags = (code_reward("code_pass", score) if kind == "code_pass" else correctness(score))([], texts, answers)
        found = [None] * len(at) if kind == "code_pass" else [extractor(score)(c) for c in texts]
        return list(zip(flags, found, strict=True))

    checked = by_task(
        {task: (scores[task], kinds[task]) for task in scores},
        [tasks.get(p) for p in ids],
        lambda pair, at: check(*pair, at),
    )
    metrics = pass_metrics(
        [
            {"prompt_id": p, "level": levels.get(p), "correct": ok == 1.0, "extracted": e}
            | ({"task": tasks[p]} if tasks.get(p) is not None else {})
            for p, (ok, e) in zip(ids, checked, strict=True)
            if ok is not None
        ]
    )
    code = {task for task, kind in kinds.items() if kind == "code_pass"}
    if None in code:
        return without_majority(metrics)
    for task in code & set(metrics.get("by_task") or {}):
        metrics["by_task"][task] = without_majority(metrics["by_task"][task])
    return metrics


def eval_stage_config(cfg: Config, model_id: str, round_idx: int | None) -> dict[str, Any]:
    """What an eval's config hash covers. It names the evaluated model (the base model, or the round whose model is
    evaluated; that model's identity is an input) but not the experiment, so two experiments whose baselines have
    the same hash measured the same thing."""
    later = {"reference_file": None, "tasks": {}}  # added later: hashed only when set, so older evals stay valid
    return {
        "eval": {k: v for k, v in cfg.eval.__dict__.items() if k not in later or v != later[k]},
        "model": {**cfg.model.__dict__, "evaluated": model_id},
        "prompts": prompts_hashed(cfg.prompts),
        "generate": {k: v for k, v in cfg.generate.__dict__.items() if k not in ("n_shards", "n_samples")},
        "score": {k: v for k, v in cfg.score.__dict__.items() if k not in later or v != later[k]},
        "seed": cfg.experiment.seed,
        "round": "baseline" if round_idx is None else round_idx,
    }


def baseline_model_id(cfg: Config) -> str:
    """How an eval names the base model it measured."""
    return f"base:{cfg.model.name_or_path}"


def evaluate_model(
    cfg: Config, round_idx: int | None, force: bool = False, shard: int | None = None, num_shards: int | None = None
) -> dict | None:
    """Evaluate round `round_idx`'s fine-tuned model, or the base model when `round_idx` is None (the baseline), in
    eval.n_shards shards of the held-out prompts; returns the manifest, or None while other processes' shards are
    unfinished."""
    if cfg.generate.backend not in BACKENDS:
        raise ConfigError(f"generate.backend={cfg.generate.backend!r} is unknown: choose from {', '.join(BACKENDS)}")
    total = cfg.eval.n_shards
    storage.check_shard_args("eval", shard, num_shards, total, force, f"eval.n_shards={total}")
    if round_idx is None:
        folder, lock_dir, manifest_round = storage.baseline_dir(cfg), storage.baseline_dir(cfg).parent, 0
        model_path, data_rdir = cfg.model.name_or_path, None
        inputs = {"model": {"path": model_path, "identity": baseline_model_id(cfg)}}
        stage_cfg = eval_stage_config(cfg, baseline_model_id(cfg), None)
        neighbours: list = []
    else:
        rdir = storage.round_dir(cfg, round_idx)
        folder, lock_dir, manifest_round, data_rdir = rdir / storage.STAGE_FOLDERS["eval"], rdir, round_idx, rdir
        model_path = str(rdir / storage.STAGE_FOLDERS["train"])
        inputs = {
            "model": storage.read_input(cfg, "train", round_idx)[1],
            "selected": storage.read_input(cfg, "select", round_idx)[1],
            "scores": storage.read_input(cfg, "score", round_idx)[1],
        }
        stage_cfg = eval_stage_config(cfg, f"round-{round_idx:04d}", round_idx)
        neighbours = storage.neighbours(cfg, "eval", round_idx)
    label = "baseline" if round_idx is None else f"round {round_idx}"
    with storage.sharded_stage(
        "eval", folder, lock_dir, stage_cfg, manifest_round, force, shard, total, inputs, neighbours
    ) as run:
        if run.done:
            return run.manifest
        prompts = eval_prompts(cfg)
        bounds = [(i * prompts.num_rows // total, (i + 1) * prompts.num_rows // total) for i in range(total)]
        on_gpu = resolve_device(cfg.generate.device) == "cuda"
        if shard is None:
            task = functools.partial(storage.shard_task, evaluate_model, cfg.to_dict(), round_idx)
            todo = [i for i in range(total) if not storage.shard_done(folder / storage.shard_name(i, total))]
            storage.run_elsewhere(cfg.executor, task, todo, f"eval {label}", storage.experiment_dir(cfg), int(on_gpu))
        loaded: dict[str, Any] = {}

        def build(i: int) -> pa.Table:
            lo, hi = bounds[i]
            return measure_shard(cfg, model_path, round_idx is None, prompts.slice(lo, hi - lo), lo, loaded)

        wanted = range(total) if shard is None else [shard]
        storage.run_shards(
            run, "eval", lock_dir, wanted, total, build, schemas.EVAL_COMPLETIONS, f"eval {label}", on_gpu, shard
        )
        loaded.clear()  # the models, before the base model may be loaded for its perplexity

        def finish() -> dict:
            table = pa.concat_tables([pq.read_table(f) for f in storage.shard_files(folder)])
            base_ppl = None if round_idx is None else base_model_perplexity(cfg, prompts)
            metrics = eval_metrics(cfg, table, prompts, base_ppl, round_idx is None)
            data = round_rewards(data_rdir) if data_rdir is not None else {}
            metrics |= {
                "reward_all": data.get("reward_all"),
                "reward_best_of_k": data.get("reward_best_of_k"),
                "reward_selected": data.get("reward_selected"),
            }
            extra = {
                "evaluated": label,
                "model_path": model_path,
                "metrics": metrics,
                "split": split_record(cfg.prompts),
            }
            if "reference" in prompts.column_names:  # lets each round reuse the baseline's perplexity of these texts
                extra["reference_digest"] = reference_digest(cfg, prompts["reference"].to_pylist())
            extra["cost"] = storage.shard_costs(folder)
            manifest = storage.finish_stage(
                run,
                "eval",
                manifest_round,
                inputs={"prompts": cfg.prompts.path},
                counts={"prompts": prompts.num_rows, "completions": table.num_rows, "shards": total},
                extra=extra,
            )
            print(f"eval {label}: {format_metrics(metrics)}")
            return manifest

        return storage.finish_when_complete(run, "eval", lock_dir, total, finish)


def evaluate(
    cfg: Config, round_idx: int, force: bool = False, shard: int | None = None, num_shards: int | None = None
) -> dict | None:
    """Run the eval stage of one round (or one shard of it); before round 0 the base model is evaluated as the
    baseline (the same shard of it, with --shard)."""
    if round_idx == 0:
        evaluate_model(cfg, None, force=force, shard=shard, num_shards=num_shards)
    return evaluate_model(cfg, round_idx, force=force, shard=shard, num_shards=num_shards)


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
        ("ppl ratio", "ppl_ratio", "{:.2f}"),
        ("distinct-2", "distinct_2", "{:.3f}"),
        ("kl", "kl", "{:.2f}"),
        ("kl/token", "kl_per_token", "{:.3f}"),
        ("entropy/token", "entropy", "{:.2f}"),
        ("truncated", "truncation_rate", "{:.2f}"),
    ]

    def part(name: str, key: str, fmt: str) -> str:
        se = m.get(f"{key}_se")  # the standard error over held-out prompts, where eval measured it
        return f"{name} {fmt.format(m[key])}" + (f" ± {fmt.format(se)}" if se is not None else "")

    line = " | ".join(part(*p) for p in parts if m.get(p[1]) is not None)
    passes = m.get("pass_at_k") or {}
    ks = [k for k in passes if k.startswith(("pass@", "maj@"))]
    if ks:  # held-out pass@1 and the largest k, and majority voting
        line += " | " + " ".join(f"{k} {passes[k]:.3f}" for k in dict.fromkeys([ks[0], *ks[-2:]]))
    tasks = passes.get("by_task") or {}
    if tasks:  # held-out pass@1 of each task of a mixed set
        line += " | " + " ".join(f"task {t} pass@1 {v['pass@1']:.3f}" for t, v in tasks.items() if "pass@1" in v)
    levels = passes.get("by_level") or {}
    if len(levels) > 1:  # held-out pass@1 of each level (levels trained on and not)
        line += " | " + " ".join(f"{lv} pass@1 {v['pass@1']:.3f}" for lv, v in levels.items() if "pass@1" in v)
    return line
