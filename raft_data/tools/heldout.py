"""Evaluate a model on the held-out prompts (never trained on): sample completions, score them with the
experiment's reward, write them as Parquet and print the mean reward.

Run as:
    raft-data heldout --config pipelines/imdb_positive.yaml --model runs/imdb_positive/round-0000/model \
        --n-prompts 16 --output runs/imdb_positive/eval-round-0000.parquet
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pyarrow as pa

from raft_data import storage
from raft_data.backends import BACKENDS
from raft_data.config import Config
from raft_data.data.prompts import split_prompts
from raft_data.errors import StageError
from raft_data.models.loading import resolve_device
from raft_data.rewards.loading import routed_reward
from raft_data.stages.evaluate import chat_texts
from raft_data.stages.generate import shard_seed
from raft_data.storage import schemas


def heldout_reward(cfg: Config, model: str, n_prompts: int, output: Path | None = None) -> dict:
    """Mean reward of `model`'s samples (K = generate.n_samples) on the first `n_prompts` held-out prompts."""
    _, heldout = split_prompts(cfg.prompts)
    if heldout.num_rows == 0:
        raise StageError(f"{cfg.prompts.path}: the held-out split is empty (prompts.heldout_fraction)")
    prompts = heldout.slice(0, n_prompts)
    sample = BACKENDS[cfg.generate.backend](model, cfg.model, cfg.generate)
    # the same seed for every model, so that two models are compared on equal terms
    ids, texts = prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()
    completions = sample(chat_texts(cfg, model, ids, texts), shard_seed(cfg.experiment.seed, -1, 0))
    gold = dict(zip(ids, prompts["answer"].to_pylist(), strict=True))
    rows: dict[str, list] = {name: [] for name in schemas.HELDOUT_COMPLETIONS.names}
    for pid, prompt, comps in zip(
        prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist(), completions, strict=True
    ):
        for k, c in enumerate(comps):
            rows["prompt_id"].append(pid)
            rows["sample_idx"].append(k)
            rows["prompt"].append(prompt)
            rows["completion"].append(c.text)
    reward = routed_reward(cfg.score, resolve_device(cfg.score.device))
    task_of = dict(zip(ids, prompts["task"].to_pylist(), strict=True)) if "task" in prompts.column_names else {}
    answers, tasks = [gold[p] for p in rows["prompt_id"]], [task_of.get(p) for p in rows["prompt_id"]]
    rows["reward"] = reward(rows["prompt"], rows["completion"], answers, tasks)
    rows["model"] = [model] * len(rows["reward"])
    table = pa.table(rows, schema=schemas.HELDOUT_COMPLETIONS)
    if output is not None:
        storage.write_parquet(table, output, schemas.HELDOUT_COMPLETIONS)
    return {
        "model": model,
        "prompts": prompts.num_rows,
        "samples": table.num_rows,
        "mean_reward": statistics.fmean(rows["reward"]),
        "reward": cfg.score.reward,
    }
