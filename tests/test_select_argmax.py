"""Selection reruns: byte-identical output, and incomplete scores refused before anything is published."""

import random

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.errors import DataError
from raft_data.stages.select import select

from .fake_rounds import fake_config, random_rows, write_round


def test_rerun_with_force_is_byte_identical(tmp_path) -> None:
    cfg = fake_config(tmp_path)
    write_round(cfg, 0, random_rows(random.Random(7), 0, n_prompts=200, k=5), n_shards=3)
    select(cfg, 0)
    path = storage.round_dir(cfg, 0) / "selected" / storage.shard_name(0, 1)
    first = path.read_bytes()
    select(cfg, 0, force=True)
    assert path.read_bytes() == first


def test_scores_missing_for_some_samples_are_refused(tmp_path) -> None:
    cfg = fake_config(tmp_path)
    rows = random_rows(random.Random(3), 0, n_prompts=50, k=5)
    write_round(cfg, 0, rows, n_shards=1)
    scores = storage.shard_files(storage.round_dir(cfg, 0) / "scores")[0]

    table = pq.read_table(scores)
    pq.write_table(table.slice(0, table.num_rows - 1), scores)
    with pytest.raises(DataError):
        select(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "selected").exists()


def test_a_memory_limit_spills_and_changes_no_byte(tmp_path) -> None:
    """select.memory_limit and select.temp_directory tell DuckDB how to run, not what to keep: with a small limit,
    the same shard, card and config hash as without one."""
    rows = random_rows(random.Random(11), 0, n_prompts=2000, k=5)
    limited = {"memory_limit": "20MB", "temp_directory": str(tmp_path / "spill")}
    outputs = []
    for name, engine in (("free", {}), ("limited", limited)):
        cfg = fake_config(tmp_path / name, strategy="global_top", **engine)
        write_round(cfg, 0, rows, n_shards=3)
        manifest = select(cfg, 0)
        folder = storage.round_dir(cfg, 0) / "selected"
        card = (folder / "README.md").read_text().replace(str(tmp_path / name), "")
        outputs.append(((folder / storage.shard_name(0, 1)).read_bytes(), card, manifest["config_hash"]))
    assert outputs[0] == outputs[1]
