"""`raft-data export` and `export-model`: the selected sets as a DatasetDict that `datasets.load_from_disk` reads,
with a dataset card whose fields agree with the rounds' manifests; a round's model with a model card; the Hub upload
checked up to the network (what would be uploaded), and its failure as one line."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.config import Config
from raft_data.errors import BackendError, ConfigError, DataError, StageError
from raft_data.tools.export import export_dataset, export_model, push_to_hub

from .test_tracking import fake_experiment

REWARD = [{"name": "vader", "weight": 1.0, "version": "3.3.2"}]


def front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def experiment(tmp_path: Path, n_rounds: int = 2) -> Config:
    cfg = fake_experiment(tmp_path, n_rounds=n_rounds)
    for r in range(n_rounds):  # the reward as the score stage records it, with library versions
        path = storage.round_dir(cfg, r) / "scores" / "manifest.json"
        storage.write_json(storage.read_json(path) | {"reward": REWARD, "versions": {"duckdb": "2.0"}}, path)
    return cfg


def selected_rows(cfg: Config, r: int) -> list[dict]:
    return pq.read_table(storage.shard_files(storage.round_dir(cfg, r) / "selected")[0]).to_pylist()


def test_all_rounds_export_loads_with_datasets_and_the_card_agrees_with_the_manifests(tmp_path: Path) -> None:
    import datasets

    cfg = experiment(tmp_path)
    out = export_dataset(cfg, tmp_path / "export")
    data = datasets.load_from_disk(str(out))
    assert list(data) == ["round_0", "round_1"]
    for r in (0, 1):
        assert data[f"round_{r}"].to_list() == selected_rows(cfg, r)
    # as the Hub reads it once pushed: the card's configs name each split's Arrow files
    hub = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {split: hub[split].to_list() for split in hub} == {split: data[split].to_list() for split in data}

    card = front_matter(out / "README.md")
    assert card["license"] == "unknown"  # export.prompts_license's default
    assert card["configs"][0]["data_files"] == [
        {"split": "round_0", "path": "round_0/data-*.arrow"},
        {"split": "round_1", "path": "round_1/data-*.arrow"},
    ]
    raft = card["raft"]
    assert raft["base_model"] == "unused" and raft["reward"] == REWARD and raft["versions"] == {"duckdb": "2.0"}
    for entry in raft["rounds"]:
        r = entry["round"]
        selected = storage.read_json(storage.round_dir(cfg, r) / "selected" / "manifest.json")
        evaluated = storage.read_json(storage.round_dir(cfg, r) / "eval" / "manifest.json")
        assert entry["selected"] == selected["counts"]["selected"] == len(data[f"round_{r}"])
        assert entry["samples"] == selected["counts"]["samples"]
        assert entry["mean_reward_selected"] == selected["reward"]["mean_selected"]
        assert entry["select_config_hash"] == selected["config_hash"]
        assert entry["eval"] == evaluated["metrics"]
        assert entry["decontamination"] == "not checked"
    body = (out / "README.md").read_text(encoding="utf-8")
    sql = storage.read_json(storage.round_dir(cfg, 0) / "selected" / "manifest.json")["config"]["sql"]
    assert sql.strip() in body  # the selection query as it ran
    assert raft["config_hash"] in body and "## Decontamination\n\nnot checked" in body


def test_merged_export_has_one_split_with_the_selection_round(tmp_path: Path) -> None:
    import datasets

    cfg = experiment(tmp_path)
    out = export_dataset(cfg, tmp_path / "merged", merged=True)
    train = datasets.load_from_disk(str(out))["train"]
    by_round = {r: [row for row in train.to_list() if row["selection_round"] == r] for r in (0, 1)}
    for r in (0, 1):
        assert [{k: v for k, v in row.items() if k != "selection_round"} for row in by_round[r]] == selected_rows(
            cfg, r
        )
    assert front_matter(out / "README.md")["raft"]["splits"] == {"train": [0, 1]}


def test_one_round_and_a_decontamination_result_when_there_is_one(tmp_path: Path) -> None:
    import datasets

    cfg = experiment(tmp_path)
    path = storage.round_dir(cfg, 1) / "selected" / "manifest.json"
    found = {"n": 8, "eval_texts": 40, "checked_rows": 6, "contaminated_rows": 2, "dropped": 2}
    storage.write_json(storage.read_json(path) | {"decontamination": found}, path)  # as select writes it
    out = export_dataset(cfg, tmp_path / "r1", rounds=[1])
    assert list(datasets.load_from_disk(str(out))) == ["round_1"]
    (entry,) = front_matter(out / "README.md")["raft"]["rounds"]
    assert entry["decontamination"] == found
    assert "contaminated_rows: 2" in (out / "README.md").read_text(encoding="utf-8")


def test_a_damaged_round_or_a_taken_folder_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    cfg = experiment(tmp_path)
    shard = storage.shard_files(storage.round_dir(cfg, 1) / "selected")[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # checked against the manifest before anything is written
    with pytest.raises(DataError, match="damaged"):
        export_dataset(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(ConfigError, match="--out"):
        export_dataset(cfg, tmp_path / "taken", rounds=[0])
    assert export_dataset(cfg, tmp_path / "taken", rounds=[0], force=True).joinpath("dataset_dict.json").exists()
    with pytest.raises(StageError, match="no finished selection"):
        export_dataset(fake_experiment(tmp_path / "empty", n_rounds=0), tmp_path / "none")


def test_export_model_copies_the_checked_folder_with_a_model_card(tmp_path: Path) -> None:
    cfg = experiment(tmp_path)
    out = export_model(cfg, 1, tmp_path / "model")
    folder = storage.round_dir(cfg, 1) / "model"
    assert (out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    trained = storage.read_json(folder / "manifest.json")
    card = front_matter(out / "README.md")
    assert card["library_name"] == "transformers" and card["license"] == "unknown"
    raft = card["raft"]
    assert raft["round"] == 1 and raft["train_loss"] == trained["train_loss"] and raft["reward"] == REWARD
    assert raft["start_model"] == trained["start_model"] and raft["steps"] == trained["counts"]["steps"]
    assert raft["eval"] == storage.read_json(storage.round_dir(cfg, 1) / "eval" / "manifest.json")["metrics"]
    assert storage.read_json(out / "raft_manifest.json") == trained


def test_push_uploads_the_folder_it_was_given(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    )

    def upload_folder(self, **kw):
        calls.append(("upload", kw["repo_id"], kw))
        kw["seen"] = sorted(p.relative_to(kw["folder_path"]).as_posix() for p in Path(kw["folder_path"]).rglob("*"))
        return type("Info", (), {"commit_url": f"https://hub/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    cfg = experiment(tmp_path)
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml())
    out = tmp_path / "export"
    raft_data(["export", "--config", str(config), "--all-rounds", "--out", str(out), "--push-to-hub", "me/raft-set"])
    (create, upload) = calls
    assert create[1] == "me/raft-set" and create[2]["repo_type"] == "dataset"
    assert upload[2]["repo_type"] == "dataset" and Path(upload[2]["folder_path"]) == out
    assert {"README.md", "dataset_dict.json", "round_0/dataset_info.json"} <= set(upload[2]["seen"])
    assert all(not s.startswith(".") for s in upload[2]["seen"])  # nothing temporary goes up

    calls.clear()
    raft_data(
        ["export-model", "--config", str(config), "--round", "0", "--out", str(tmp_path / "m")]
        + ["--push-to-hub", "me/raft-model"]
    )
    assert calls[0][2]["repo_type"] == "model" and "README.md" in calls[1][2]["seen"]


def test_push_without_a_token_or_a_network_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(BackendError, match="no Hugging Face token"):
        push_to_hub(tmp_path, "me/x", "dataset")

    def refused(self, *a, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    cfg = experiment(tmp_path, n_rounds=1)
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml())
    with pytest.raises(SystemExit) as e:
        raft_data(
            ["export", "--config", str(config), "--round", "0", "--out", str(tmp_path / "o"), "--push-to-hub", "me/x"]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar of the save
    assert err.startswith("error: ") and "cannot push to me/x (ConnectionError" in err and str(tmp_path / "o") in err
    with pytest.raises(ConfigError, match="owner/name"):
        push_to_hub(tmp_path, "no-owner", "dataset")


def test_export_command_needs_the_rounds_named(tmp_path: Path, capsys) -> None:
    cfg = experiment(tmp_path, n_rounds=1)
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml())
    with pytest.raises(SystemExit) as e:
        raft_data(["export", "--config", str(config), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--round N or --all-rounds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        raft_data(["export", "--config", str(config), "--round", "3", "--out", str(tmp_path / "o")])
    assert "round-0003" in capsys.readouterr().err and not (tmp_path / "o").exists()
