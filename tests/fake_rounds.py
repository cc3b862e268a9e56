"""Write rounds of samples/ and scores/ shards straight to disk, in the layout and schemas the stages write,
so selection can be tested on many random data sets without generating text with a model."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.config import Config, config_from_dict
from raft_data.storage import schemas

WORDS = ["great", "bad", "fine", "dull", "", "  ", "moving", "a mess", "great"]


def fake_config(tmp_path: Path, **select: object) -> Config:
    return config_from_dict(
        {
            "experiment": {"name": "fake", "output_root": str(tmp_path / "runs")},
            "model": {"name_or_path": "unused"},
            "prompts": {"path": "unused.jsonl"},
            "generate": {"n_samples": 5},
            "select": dict(select),
        }
    )


def random_rows(rng: random.Random, round_idx: int, n_prompts: int, k: int, levels: int = 4) -> list[dict]:
    """Rewards from a few levels, so ties are common; completions repeat and are sometimes empty."""
    rows = []
    for p in range(n_prompts):
        pid = f"p{rng.randrange(n_prompts * 2):04d}" if round_idx else f"p{p:04d}"
        if any(r["prompt_id"] == pid for r in rows):
            continue
        for i in range(k):
            rows.append(
                {
                    "prompt_id": pid,
                    "sample_idx": i,
                    "prompt": f"prompt {pid}",
                    "completion": rng.choice(WORDS),
                    "n_tokens": rng.randrange(1, 9),
                    "truncated": rng.random() < 0.3,
                    "reward": rng.randrange(levels) / 2 - 0.5,
                    "kl_free": rng.random(),
                    "round": round_idx,
                }
            )
    return rows


def write_round(cfg: Config, round_idx: int, rows: list[dict], n_shards: int = 2) -> None:
    """samples/ and scores/ of one round, sharded, with manifests, as generate and score leave them."""
    rdir = storage.round_dir(cfg, round_idx)
    extra = sorted({k for r in rows for k in r} - set(schemas.SAMPLES.names) - {"reward"})
    scores_schema = schemas.scores_schema(["reward", *extra])
    for stage, schema in (("generate", schemas.SAMPLES), ("score", scores_schema)):
        folder = rdir / storage.STAGE_FOLDERS[stage]
        for s in range(n_shards):
            part = rows[s::n_shards]
            data = {name: [r.get(name) for r in part] for name in schema.names}
            data |= {"source": ["policy"] * len(part), "generator": ["fake"] * len(part), "seed": [0] * len(part)}
            data |= {"round": [round_idx] * len(part)}
            table = pa.table({name: data[name] for name in schema.names}, schema=schema)
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / storage.shard_name(s, n_shards))  # no fsync: test data
        manifest = {"stage": stage, "round": round_idx, "config_hash": f"{stage}-{round_idx}", "config": {}}
        manifest["counts"] = {"prompts": len({r["prompt_id"] for r in rows}), "rows": len(rows), "shards": n_shards}
        manifest["files"] = storage.inventory(folder)
        manifest["identity"] = storage.manifests.identity(manifest["files"])
        if stage == "score":  # scores name the samples they scored, as the score stage records them
            samples = storage.read_json(rdir / storage.STAGE_FOLDERS["generate"] / "manifest.json")
            manifest["inputs"] = {"samples": storage.input_ref(rdir / storage.STAGE_FOLDERS["generate"], samples)}
        storage.write_json(manifest, folder / "manifest.json")


def relist(folder: Path) -> None:
    """Rewrite a fake stage's file list after a test changed its files on purpose (the checksums then agree, so
    what is tested is the check behind them)."""
    manifest = storage.read_json(folder / "manifest.json")
    manifest["files"] = storage.inventory(folder)
    manifest["identity"] = storage.manifests.identity(manifest["files"])
    storage.write_json(manifest, folder / "manifest.json")
    downstream = folder.parent / storage.STAGE_FOLDERS["score"] / "manifest.json"
    if folder.name == storage.STAGE_FOLDERS["generate"] and downstream.exists():
        scores = storage.read_json(downstream)
        scores["inputs"] = {"samples": storage.input_ref(folder, manifest)}
        storage.write_json(scores, downstream)
