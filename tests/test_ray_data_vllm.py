"""executor.kind=ray_data with generate.backend=vllm, for real: a `ray.data.llm` vLLM engine processor (one CPU engine)
on a local Ray cluster, the default SmolLM2 model, each stage its own process (`python -m raft_data generate`).

Marked `vllm`: `make test-vllm` runs it in .venv-vllm, which holds vLLM and Ray Data; skipped where either is missing.
"""

from __future__ import annotations

import importlib.util

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.backends.ray_data import OUTPUT

from .conftest import REAL_MODEL, make_config, require_assets
from .test_backend_vllm import EAGER, check_shards, run_stage

HAS_RAY_DATA_LLM = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("ray") is not None
needs_ray_data_llm = pytest.mark.skipif(
    not HAS_RAY_DATA_LLM, reason="vllm or Ray Data is not importable here: run `make test-vllm`"
)

# Two shards of two prompts, K = 2, up to 16 tokens ending at the first sentence: some samples end on a stop string,
# others at the token limit, so `truncated` is read both ways.
GENERATE = {
    "backend": "vllm",
    "n_samples": 2,
    "max_new_tokens": 16,
    "n_shards": 2,
    "stop": [".", "!", "?"],
    "engine_kwargs": EAGER,
}


def rows_of(cfg) -> list[list[dict]]:
    return [pq.read_table(f).to_pylist() for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples")]


@pytest.mark.vllm
@needs_ray_data_llm
def test_ray_data_vllm_processor_writes_the_local_engines_shards_and_resumes(tmp_path, prompts_file) -> None:
    require_assets()
    pytest.importorskip("ray.data.llm")
    local = make_config(tmp_path / "local", REAL_MODEL, prompts_file, prompts={"n_prompts": 4}, generate=GENERATE)
    executor = {"kind": "ray_data", "ray_data_replicas": 1, "ray_data_batch_size": 3}
    on_ray = make_config(
        tmp_path / "ray", REAL_MODEL, prompts_file, prompts={"n_prompts": 4}, generate=GENERATE, executor=executor
    )
    run_stage(local, tmp_path, "local.yaml")
    run_stage(on_ray, tmp_path, "ray.yaml")
    check_shards(on_ray)

    # each row its own request, seeded as the local engine seeds that sample: the same shards, byte for byte
    expected = rows_of(local)
    assert any(r["truncated"] for rows in expected for r in rows)
    assert not all(r["truncated"] for rows in expected for r in rows)
    for a, b in zip(
        storage.shard_files(storage.round_dir(local, 0) / "samples"),
        storage.shard_files(storage.round_dir(on_ray, 0) / "samples"),
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes(), a.name

    # a pass that died: shard 1 unfinished, half its rows brought back; the rerun sends only the other half
    folder = storage.round_dir(on_ray, 0) / "samples"
    shard = folder / storage.shard_name(1, 2)
    done_before = storage.marker_path(folder / storage.shard_name(0, 2)).read_text()
    for path in (shard, storage.marker_path(shard), folder / "manifest.json"):
        path.unlink()
    kept = pa.Table.from_pylist(expected[1][::2]).select(OUTPUT.names).cast(OUTPUT)
    kept = kept.set_column(2, "completion", pa.array(["kept"] * kept.num_rows))
    storage.write_parquet(kept, folder / ".partial" / "shard-00001-of-00002" / "part-000000.parquet", OUTPUT)
    run_stage(on_ray, tmp_path, "ray.yaml")
    resumed = rows_of(on_ray)
    assert storage.marker_path(folder / storage.shard_name(0, 2)).read_text() == done_before
    assert [r["completion"] for r in resumed[1][::2]] == ["kept"] * kept.num_rows
    assert resumed[1][1::2] == expected[1][1::2]
    assert storage.read_json(folder / "manifest.json")["counts"]["samples"] == 8
