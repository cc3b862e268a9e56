"""A whole round on the real SmolLM2-135M-Instruct model, real prompts and the VADER reward (small b and K)."""

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

from raft_data import storage
from raft_data.config import load_config
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_sft.train import train

from .conftest import ROOT, require_assets


@pytest.mark.real_model
def test_one_round_on_smollm2(tmp_path, monkeypatch) -> None:
    require_assets()
    monkeypatch.chdir(ROOT)  # the pipeline's asset paths are relative to the project root
    cfg = load_config(
        ROOT / "pipelines" / "imdb_positive.yaml",
        [
            f"experiment.output_root={tmp_path}",
            "prompts.n_prompts=4",
            "generate.n_samples=2",
            "generate.max_new_tokens=16",
            "generate.n_shards=2",
            "select.drop_truncated=false",  # every prompt keeps a candidate: 4 selected
            "sft.num_train_epochs=1",
            "sft.per_device_train_batch_size=4",
        ],
    )
    generate(cfg, 0)
    score(cfg, 0)
    manifest = select(cfg, 0)
    train(cfg, 0)

    rdir = storage.round_dir(cfg, 0)
    samples = pq.read_table([str(p) for p in storage.shard_files(rdir / "samples")])
    assert samples.num_rows == 8
    completions = samples["completion"].to_pylist()
    assert sum(len(c.split()) >= 3 for c in completions) >= 6, completions  # real text, not noise
    r = manifest["reward"]
    assert r["mean_selected"] >= r["mean_all"]  # best-of-2 is never worse than the average
    ds = load_dataset("parquet", data_files=str(rdir / "selected" / "*.parquet"), split="train")
    assert len(ds) == 4
    model_manifest = rdir / "model" / "manifest.json"
    assert model_manifest.exists() and (rdir / "model" / "model.safetensors").exists()
