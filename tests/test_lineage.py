"""Lineage: every stage records the identity of what it read, every reader checks it, and a redone stage never
feeds stale results downstream. Each scenario ends in a refusal or a stale mark with one line, and a plain rerun
afterwards ends byte-identical to a clean run. On the tiny model."""

from __future__ import annotations

import fcntl

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.errors import DataError, StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_data.tools.status import round_status, verify_experiment
from raft_sft.train import train

from .conftest import make_config
from .test_replay import replay_config


def shard_bytes(cfg, round_idx: int, stages=("generate", "score", "select")) -> dict[str, bytes]:
    out = {}
    for stage in stages:
        folder = storage.round_dir(cfg, round_idx) / storage.STAGE_FOLDERS[stage]
        out |= {f"{stage}/{p.name}": p.read_bytes() for p in sorted(folder.glob("*.parquet"))}
    return out


def data_round(cfg, round_idx: int = 0) -> None:
    generate(cfg, round_idx)
    score(cfg, round_idx)
    select(cfg, round_idx)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_regenerated_samples_make_scores_stale_and_a_plain_rerun_redoes_them(
    tmp_path, tiny_model_dir, prompts_file, capsys
):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    data_round(cfg)
    capsys.readouterr()
    # the samples are redone (here: hotter sampling), after scores and selection were built on the old ones
    hotter = make_config(tmp_path, tiny_model_dir, prompts_file, generate={"temperature": 1.7})
    generate(hotter, 0, force=True)
    said = capsys.readouterr().out
    assert "deleted" in said and "scores" in said and "selected" in said and "a plain rerun" in said

    with pytest.raises(StageError) as refused:  # select never joins new completions with old rewards
        select(hotter, 0)
    message = one_line(str(refused.value))
    assert "scores is stale" in message and "raft-data score --round 0" in message
    status = "\n".join(round_status(hotter, 0))
    assert "scores/    STALE" in status and "selected/  STALE" in status
    assert any("stale" in p for p in verify_experiment(hotter))

    score(hotter, 0)  # a plain rerun of each stale stage redoes it, saying what it deleted
    assert "stale" in capsys.readouterr().out
    select(hotter, 0)
    assert verify_experiment(hotter) == []

    clean = make_config(tmp_path / "clean", tiny_model_dir, prompts_file, generate={"temperature": 1.7})
    data_round(clean)
    assert shard_bytes(hotter, 0) == shard_bytes(clean, 0)


def test_a_redone_stage_with_the_same_content_leaves_its_dependants_valid(tiny_config):
    data_round(tiny_config)
    before = shard_bytes(tiny_config, 0)
    generate(tiny_config, 0, force=True)  # the same config draws the same samples: nothing downstream is stale
    assert select(tiny_config, 0)  # done, skipped, and true
    assert verify_experiment(tiny_config) == []
    assert shard_bytes(tiny_config, 0) == before


@pytest.mark.parametrize("running, starting", [("generate", "score"), ("score", "generate"), ("score", "select")])
def test_a_stage_does_not_start_while_a_neighbour_runs(tiny_config, running, starting):
    data_round(tiny_config)
    rdir = storage.round_dir(tiny_config, 0)
    stages = {"generate": generate, "score": score, "select": select}
    with open(rdir / f".{running}.running", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # as a worker of `running` holds it
        with pytest.raises(StageError) as refused:
            stages[starting](tiny_config, 0, force=True)
        assert f"{running} is running" in one_line(str(refused.value))
    assert verify_experiment(tiny_config) == []  # nothing was touched


def test_select_force_after_sft_makes_the_model_stale_and_the_next_round_refuses(
    tmp_path, tiny_model_dir, prompts_file, capsys
):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    data_round(cfg)
    train(cfg, 0)
    capsys.readouterr()
    other = make_config(tmp_path, tiny_model_dir, prompts_file, select={"strategy": "random_per_prompt"})
    select(other, 0, force=True)
    assert "model" in capsys.readouterr().out
    with pytest.raises(StageError) as refused:  # the next round does not sample from a model of a lost selection
        generate(other, 1)
    message = one_line(str(refused.value))
    assert "model is stale" in message and "raft-sft train --round 0" in message
    assert "model/     STALE" in "\n".join(round_status(other, 0))

    train(other, 0)  # plain rerun: redone from the new selection
    generate(other, 1)
    assert verify_experiment(other) == []

    clean = make_config(tmp_path / "clean", tiny_model_dir, prompts_file, select={"strategy": "random_per_prompt"})
    data_round(clean)
    train(clean, 0)
    generate(clean, 1)

    def samples(cfg):  # the generator column names the model folder, which differs between the two experiments
        folder = storage.round_dir(cfg, 1) / "samples"
        return [pq.read_table(p).drop_columns(["generator"]) for p in storage.shard_files(folder)]

    assert samples(other) == samples(clean)
    model = "model/model.safetensors"
    assert (storage.round_dir(other, 0) / model).read_bytes() == (storage.round_dir(clean, 0) / model).read_bytes()


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_or_deleted_weights_are_refused_and_reported(tmp_path, tiny_model_dir, prompts_file, damage):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file)
    data_round(cfg)
    train(cfg, 0)
    weights = storage.round_dir(cfg, 0) / "model" / "model.safetensors"
    good = weights.read_bytes()
    if damage == "flip":
        data = bytearray(good)
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    with pytest.raises(DataError) as refused:
        generate(cfg, 1)
    message = one_line(str(refused.value))
    assert str(weights) in message and ("damaged" if damage == "flip" else "missing") in message
    assert "raft-sft train --round 0 --force" in message
    problems = verify_experiment(cfg)
    assert len(problems) == 1 and str(weights) in problems[0]

    train(cfg, 0, force=True)  # the rebuild the message names
    assert weights.read_bytes() == good
    generate(cfg, 1)
    assert verify_experiment(cfg) == []


def test_edited_replay_data_is_refused(tmp_path, tiny_model_dir):
    cfg = replay_config(tmp_path, tiny_model_dir, fraction=0.5)
    data_round(cfg)
    replay = storage.round_dir(cfg, 0) / "selected" / "replay.parquet"
    good = replay.read_bytes()
    replay.write_bytes(good[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match="replay.parquet is damaged"):
        train(cfg, 0)
    assert any("replay.parquet" in p for p in verify_experiment(cfg))
    select(cfg, 0, force=True)
    assert replay.read_bytes() == good
    train(cfg, 0)
    assert verify_experiment(cfg) == []


def test_manifests_record_the_identity_of_each_input(tiny_config):
    data_round(tiny_config)
    train(tiny_config, 0)
    rdir = storage.round_dir(tiny_config, 0)
    manifests = {
        s: storage.read_json(rdir / f / "manifest.json") for s, f in storage.STAGE_FOLDERS.items() if s != "eval"
    }
    assert manifests["score"]["inputs"]["samples"]["identity"] == manifests["generate"]["identity"]
    assert manifests["select"]["inputs"]["scores"]["identity"] == manifests["score"]["identity"]
    assert manifests["select"]["inputs"]["samples"]["identity"] == manifests["generate"]["identity"]
    assert manifests["train"]["inputs"]["selected"]["identity"] == manifests["select"]["identity"]
    assert "model.safetensors" in manifests["train"]["files"]
    for m in manifests.values():  # every published file is listed with its size and checksum
        folder = rdir / storage.STAGE_FOLDERS[m["stage"]]
        assert set(m["files"]) == {str(p.relative_to(folder)) for p in storage.manifests.content_files(folder)}
        assert storage.manifests.identity(m["files"]) == m["identity"]


def test_identity_follows_content_not_time(tmp_path):
    folder = tmp_path / "exp" / "round-0000" / "samples"
    folder.mkdir(parents=True)
    (folder / "a.parquet").write_bytes(b"one")
    first = storage.manifests.identity(storage.inventory(folder))
    (folder / "a.parquet").write_bytes(b"one")
    assert storage.manifests.identity(storage.inventory(folder)) == first
    (folder / "a.parquet").write_bytes(b"two")
    assert storage.manifests.identity(storage.inventory(folder)) != first


def test_stale_marks_follow_the_chain(tiny_config):
    data_round(tiny_config)
    train(tiny_config, 0)
    rdir = storage.round_dir(tiny_config, 0)
    manifest = rdir / "samples" / "manifest.json"
    data = storage.read_json(manifest)
    data["identity"] = "0" * 16  # as if the samples were rebuilt with other content
    storage.write_json(data, manifest)
    assert "changed since it was made" in storage.stale_reason(rdir / "scores")
    assert "changed since it was made" in storage.stale_reason(rdir / "selected")
    assert "its selected" in storage.stale_reason(rdir / "model") and "is stale" in storage.stale_reason(
        rdir / "model"
    )
    assert [p.name for p in storage.dependants(rdir / "samples")] == ["scores", "selected", "model"]
