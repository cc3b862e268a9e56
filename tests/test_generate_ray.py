"""The Ray executor: a round's shards as Ray tasks on a local cluster, resumable like the local run.

Needs the optional extra (`pip install 'raft-toolkit[ray]'`); skipped when Ray is not installed.
"""

from __future__ import annotations

import pytest

from raft_data import storage
from raft_data.stages.generate import generate

from .conftest import make_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_shards_match_local_run_and_resume(tmp_path, tiny_model_dir, prompts_file, local_ray):
    local = make_config(tmp_path / "local", tiny_model_dir, prompts_file)
    generate(local, 0)

    on_ray = make_config(tmp_path / "ray", tiny_model_dir, prompts_file, executor={"kind": "ray"})
    generate(on_ray, 0, shard=1)  # as if a first attempt died after one shard
    done_first = (storage.round_dir(on_ray, 0) / "samples" / "shard-00001-of-00003.done").read_text()
    manifest = generate(on_ray, 0)

    assert manifest is not None and manifest["counts"]["samples"] == 8 * 3
    # the finished shard was not redone, and the executor is not part of the config hash
    assert (storage.round_dir(on_ray, 0) / "samples" / "shard-00001-of-00003.done").read_text() == done_first
    assert (
        manifest["config_hash"]
        == storage.read_json(storage.round_dir(local, 0) / "samples" / "manifest.json")["config_hash"]
    )
    for a, b in zip(
        storage.shard_files(storage.round_dir(local, 0) / "samples"),
        storage.shard_files(storage.round_dir(on_ray, 0) / "samples"),
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes(), a.name
