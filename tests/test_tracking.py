"""Experiment trackers: each finished round's metrics, selection statistics, costs and kept/rejected table reach
TensorBoard, trackio, wandb (offline) and mlflow (a file store), read back with each tracker's own reader; replaying
an experiment logs each round once."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.config import Config, config_from_dict
from raft_data.errors import ConfigError
from raft_data.stages.select import select
from raft_data.stages.track import _flatten, finished_rounds, kept_and_rejected, round_record, track
from raft_data.storage.tracking import tracker_dir

from .fake_rounds import random_rows, write_round

N_PROMPTS, K = 6, 5


def fake_experiment(tmp_path: Path, n_rounds: int = 2, select_cfg: dict | None = None, **tracking: object) -> Config:
    """Rounds of fake samples and scores, selected for real, with an eval and a train manifest each."""
    cfg = config_from_dict(
        {
            "experiment": {"name": "tracked", "output_root": str(tmp_path / "runs")},
            "model": {"name_or_path": "unused"},
            "prompts": {"path": "unused.jsonl"},
            "generate": {"n_samples": K},
            "select": select_cfg or {},
            "tracking": dict(tracking),
        }
    )
    rng = random.Random(0)
    for r in range(n_rounds):
        write_round(cfg, r, random_rows(rng, r, N_PROMPTS, K))
        select(cfg, r)
        write_eval(cfg, r, reward=0.1 * (r + 1))
        write_model(cfg, r)
    return cfg


def write_model(cfg: Config, round_idx: int) -> None:
    """A model folder with its files listed in a train manifest, as the SFT stage leaves one."""
    folder = storage.round_dir(cfg, round_idx) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * (round_idx + 1))
    files = storage.inventory(folder)
    manifest = {"stage": "train", "round": round_idx, "config_hash": f"train-{round_idx}", "files": files}
    manifest |= {"identity": storage.manifests.identity(files), "train_loss": 2.0 - round_idx, "wall_time_s": 3.0}
    manifest |= {"counts": {"steps": 4, "examples": 6}, "config": {"sft": {"learning_rate": 1e-5}}}
    manifest |= {"start_model": "unused" if round_idx == 0 else f"round-{round_idx - 1:04d}/model"}
    storage.write_json(manifest | {"versions": {"trl": "1.16.0"}}, folder / "manifest.json")


def write_eval(cfg: Config, round_idx: int, reward: float, identity: str | None = None) -> None:
    metrics = {"reward_sampled": reward, "kl_per_token": 0.01, "pass_at_k": {"pass@1": 0.5}, "note": "text"}
    manifest = {"stage": "eval", "round": round_idx, "identity": identity or f"eval-{round_idx}", "metrics": metrics}
    storage.write_json(manifest | {"wall_time_s": 1.5}, storage.round_dir(cfg, round_idx) / "eval" / "manifest.json")


def test_a_round_record_holds_eval_selection_cost_and_the_kept_rejected_table(tmp_path: Path) -> None:
    cfg = fake_experiment(tmp_path, n_rounds=1, table_prompts=2, table_max_rows=6)
    record = round_record(cfg, 0)
    selected = storage.read_json(storage.round_dir(cfg, 0) / "selected" / "manifest.json")
    s = record["scalars"]
    assert s["eval/reward_sampled"] == pytest.approx(0.1)
    assert s["eval/pass_at_k/pass_1"] == 0.5 and "eval/note" not in s  # names trackers accept; text left out
    assert s["select/selected"] == selected["counts"]["selected"]
    assert s["select/acceptance"] == pytest.approx(selected["counts"]["selected"] / selected["counts"]["samples"])
    assert s["cost/eval_s"] == 1.5 and s["cost/train_s"] == 3.0 and s["train/loss"] == 2.0
    rows = record["rows"]
    assert len(rows) == 6 and len({r["prompt_id"] for r in rows}) == 2  # 3 per prompt of the 2 shown
    kept = {(r["prompt_id"], r["sample_idx"]) for r in rows if r["kept"]}
    import pyarrow.parquet as pq

    chosen = pq.read_table(storage.shard_files(storage.round_dir(cfg, 0) / "selected")[0]).to_pylist()
    assert kept == {(r["prompt_id"], r["sample_idx"]) for r in chosen if r["prompt_id"] in {x for x, _ in kept}}
    for pid in {r["prompt_id"] for r in rows}:  # the kept sample first, then the rejected ones best first
        group = [r for r in rows if r["prompt_id"] == pid]
        assert group[0]["kept"] and all(not r["kept"] for r in group[1:])
        assert [r["reward"] for r in group[1:]] == sorted((r["reward"] for r in group[1:]), reverse=True)


def test_a_pooled_selection_marks_only_this_rounds_samples_kept(tmp_path: Path) -> None:
    """Regression: with the cumulative strategy, round 1's selection holds round 0's samples too; a round-1 sample
    that shares a prompt and sample index with a kept round-0 one is not kept."""
    import pyarrow.parquet as pq

    cfg = fake_experiment(tmp_path, select_cfg={"strategy": "cumulative"}, table_prompts=12, table_max_rows=500)
    chosen = pq.read_table(storage.shard_files(storage.round_dir(cfg, 1) / "selected")[0]).to_pylist()
    assert {r["round"] for r in chosen} == {0, 1}  # the case this guards against is there
    mine = {(r["prompt_id"], r["sample_idx"]) for r in chosen if r["round"] == 1}
    rows = round_record(cfg, 1)["rows"]
    assert {(r["prompt_id"], r["sample_idx"]) for r in rows if r["kept"]} == mine


def test_tensorboard_gets_every_round_once_and_a_replay_sends_only_what_changed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = fake_experiment(tmp_path, report_to=["tensorboard"])
    assert finished_rounds(cfg) == [0, 1]
    assert track(cfg)["tensorboard"]["rounds"] == [0, 1]
    assert track(cfg)["tensorboard"]["rounds"] == []  # idempotent: nothing new
    write_eval(cfg, 1, reward=0.9, identity="eval-1-rerun")  # round 1's eval rebuilt: only round 1 again
    assert track(cfg)["tensorboard"]["rounds"] == [1]

    events = EventAccumulator(str(tracker_dir(cfg, "tensorboard") / "tracked"))
    events.Reload()
    by_step = {}
    for e in events.Scalars("eval/reward_sampled"):
        by_step.setdefault(e.step, []).append(e.value)
    assert by_step[0] == [pytest.approx(0.1)] and by_step[1][-1] == pytest.approx(0.9)
    selected = [e.value for e in events.Scalars("select/selected")]
    assert selected[:2] == [round_record(cfg, r)["scalars"]["select/selected"] for r in (0, 1)]
    assert "samples/kept_and_rejected/text_summary" in events.Tags()["tensors"]


def test_mlflow_file_store_holds_the_metrics_per_round(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    cfg = fake_experiment(tmp_path, report_to=["mlflow"], project="proj", run_name="run-a")
    track(cfg)
    track(cfg, rounds=[0], force=True)  # force sends again, into the same run
    client = MlflowClient(tracking_uri=tracker_dir(cfg, "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name("proj")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["run-a"]
    history = client.get_metric_history(runs[0].info.run_id, "eval/reward_sampled")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 0.1), (0, 0.1), (1, 0.2)]
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "samples")]
    assert artifacts == ["samples/round-0000.json", "samples/round-0001.json"]


def test_trackio_local_database_holds_the_metrics_per_round(tmp_path: Path) -> None:
    pytest.importorskip("trackio")
    cfg = fake_experiment(tmp_path, report_to=["trackio"])
    track(cfg)
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tracked", "tracked")
    assert [(log["step"], round(log["eval/reward_sampled"], 6)) for log in logs] == [(0, 0.1), (1, 0.2)]
    assert all(log["samples/kept_and_rejected"]["_type"] == "trackio.table" for log in logs)
    assert (tracker_dir(cfg, "trackio") / "tracked.db").exists()


def wandb_history(run_dir: Path) -> list[dict]:
    """The `history` records of an offline wandb run file (a LevelDB-style log of protobuf records: a 7-byte file
    header, 32 KiB blocks, each record piece behind a 7-byte header of checksum, length and kind)."""
    import json

    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pieces, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the padded end of a block
            pos += left
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            records.append(pieces)
            pieces = b""
    out = []
    for blob in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            out.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return out


def test_wandb_offline_run_holds_the_metrics_per_round(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = fake_experiment(tmp_path, report_to=["wandb"])
    track(cfg)
    runs = sorted((tracker_dir(cfg, "wandb") / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history = wandb_history(runs[0])
    assert [(h["round"], round(h["eval/reward_sampled"], 6)) for h in history] == [(0, 0.1), (1, 0.2)]
    for h in history:  # the table, as a file beside the run: 4 prompts x K samples
        assert h["samples/kept_and_rejected/_type"] == "table-file"
        assert h["samples/kept_and_rejected/nrows"] == len(round_record(cfg, h["round"])["rows"]) == 4 * K


def test_track_command_replays_and_says_what_it_sent(tmp_path: Path, capsys) -> None:
    pytest.importorskip("tensorboard")
    cfg = fake_experiment(tmp_path)
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml())
    raft_data(["track", "--config", str(config), "tracking.report_to=[tensorboard]"])
    out = capsys.readouterr().out
    assert "tensorboard: rounds 0, 1" in out and str(tracker_dir(cfg, "tensorboard")) in out
    raft_data(["track", "--config", str(config), "tracking.report_to=[tensorboard]"])
    assert "tensorboard: nothing new" in capsys.readouterr().out


def test_track_command_without_trackers_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    cfg = fake_experiment(tmp_path, n_rounds=1)
    config = tmp_path / "exp.yaml"
    config.write_text(cfg.to_yaml())
    with pytest.raises(SystemExit) as e:
        raft_data(["track", "--config", str(config)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tracking.report_to" in err


@pytest.mark.parametrize(
    "tracking, key",
    [
        ({"report_to": ["neptune"]}, "tracking.report_to"),
        ({"report_to": "tensorboard,neptune"}, "tracking.report_to"),
        ({"report_to": ["wandb", "wandb"]}, "tracking.report_to"),
        ({"run_name": "a/b"}, "tracking.run_name"),
        ({"table_prompts": -1}, "tracking.table_prompts"),
    ],
)
def test_bad_tracking_settings_name_the_key(tracking: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"model": {"name_or_path": "m"}, "prompts": {"path": "p.jsonl"}, "tracking": tracking})


def test_report_to_as_text_is_a_comma_separated_list() -> None:
    base = {"model": {"name_or_path": "m"}, "prompts": {"path": "p.jsonl"}}
    assert config_from_dict(base | {"tracking": {"report_to": "tensorboard, mlflow"}}).tracking.report_to == [
        "tensorboard",
        "mlflow",
    ]
    assert config_from_dict(base | {"tracking": {"report_to": "none"}}).tracking.report_to == []


def test_tracking_settings_change_no_stage_identity(tmp_path: Path) -> None:
    """Turning trackers on is not a new config: every stage of a finished round stays done."""
    cfg = fake_experiment(tmp_path, n_rounds=1)
    before = storage.read_json(storage.round_dir(cfg, 0) / "selected" / "manifest.json")
    tracked = config_from_dict(cfg.to_dict() | {"tracking": {"report_to": ["tensorboard"], "run_name": "x"}})
    assert select(tracked, 0)["config_hash"] == before["config_hash"]


nested = st.recursive(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**6), 10**6),
        st.booleans(),
        st.text(max_size=4),
    ),
    lambda inner: st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


@given(nested)
def test_flatten_keeps_every_finite_number_under_a_name_every_tracker_takes(value) -> None:
    out: dict[str, float] = {}
    _flatten("eval", value, out)

    def leaves(v):
        if isinstance(v, dict):
            return [x for item in v.values() for x in leaves(item)]
        return [v]

    finite = [v for v in leaves(value) if not isinstance(v, (bool, str)) and math.isfinite(v)]
    assert all(ch.isalnum() or ch in "_-./ :" for key in out for ch in key)
    assert all(math.isfinite(v) for v in out.values())
    assert len(out) <= len(finite)  # names may collide after cleaning, never more
    if len(set(out)) == len(finite):
        assert sorted(out.values()) == sorted(float(v) for v in finite)


def test_rounds_send_each_round_and_the_sft_loss_curves_to_the_trackers(tmp_path: Path, tiny_model_dir, capsys):
    """A real round of the tiny model with TensorBoard and mlflow: the round's metrics in the rounds' run, TRL's loss
    curve in the round's SFT run beside it, and the SFT stage's identity unchanged by tracking."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raft_data.rounds import run_rounds
    from raft_sft.train import train

    from .test_rounds import rounds_config

    cfg = rounds_config(tmp_path, tiny_model_dir, tracking={"report_to": ["tensorboard", "mlflow"]})
    run_rounds(cfg, 1, train)
    assert "tracking: round 0 sent in " in capsys.readouterr().out
    tb = tracker_dir(cfg, "tensorboard")
    rounds_run = EventAccumulator(str(tb / "test"))
    rounds_run.Reload()
    evaluated = storage.read_json(storage.round_dir(cfg, 0) / "eval" / "manifest.json")["metrics"]
    (point,) = rounds_run.Scalars("eval/reward_sampled")
    assert point.step == 0 and point.value == pytest.approx(evaluated["reward_sampled"])
    sft_run = EventAccumulator(str(tb / "test-sft-round-0000"))
    sft_run.Reload()
    trained = storage.read_json(storage.round_dir(cfg, 0) / "model" / "manifest.json")
    losses = [e["loss"] for e in trained["log_history"] if "loss" in e]
    assert [round(e.value, 4) for e in sft_run.Scalars("train/loss")] == [round(x, 4) for x in losses]
    assert trained["sft_args"]["report_to"] == ["tensorboard", "mlflow"]

    client = MlflowClient(tracking_uri=tracker_dir(cfg, "mlflow").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["test", "test-sft-round-0000"]
    untracked = config_from_dict(cfg.to_dict() | {"tracking": {}})
    assert train(untracked, 0)["config_hash"] == trained["config_hash"]  # still done: nothing retrained


@pytest.fixture(scope="module")
def one_round(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return fake_experiment(tmp_path_factory.mktemp("table"), n_rounds=1)


@settings(max_examples=25, deadline=None)
@given(n_prompts=st.integers(0, 8), max_rows=st.integers(0, 40))
def test_the_table_keeps_to_its_caps_and_shows_the_kept_sample_first(one_round: Config, n_prompts, max_rows) -> None:
    import dataclasses

    cfg = dataclasses.replace(
        one_round, tracking=dataclasses.replace(one_round.tracking, table_prompts=n_prompts, table_max_rows=max_rows)
    )
    rows = kept_and_rejected(cfg, 0)
    assert len(rows) <= max_rows
    shown = list(dict.fromkeys(r["prompt_id"] for r in rows))
    assert len(shown) <= min(n_prompts, N_PROMPTS) and shown == sorted(shown)
    for pid in shown:
        group = [r for r in rows if r["prompt_id"] == pid]
        assert len(group) <= max(1, max_rows // n_prompts)
        assert group[0]["kept"]  # best_per_prompt keeps one sample of every prompt: it comes first
    if n_prompts and max_rows >= n_prompts:  # room for every shown prompt: all of them are there
        assert len(shown) == min(n_prompts, N_PROMPTS)
