"""The drift guard of the rounds driver (`rounds.max_kl_per_token`, `rounds.max_ppl_ratio`, `rounds.on_drift`), on
fake rounds: every stage is stubbed, and eval returns manifests with chosen metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

import raft_data.rounds as rounds_module
from raft_data import storage
from raft_data.config import Config
from raft_data.errors import ConfigError, StageError
from raft_data.rounds import run_rounds

from .fake_rounds import fake_config


def drift_config(tmp_path: Path, **rounds: object) -> Config:
    cfg = fake_config(tmp_path)
    for key, value in rounds.items():
        setattr(cfg.rounds, key, value)
    cfg.eval.reference_column = "text"
    return cfg


def fake_run(cfg: Config, monkeypatch: pytest.MonkeyPatch, ppl_ratios: list[float], kl: float = 0.01) -> tuple:
    """Stub every stage; eval writes and returns a manifest whose ppl_ratio is ppl_ratios[round]. Returns (what
    each stage was called with and the models generate and train would start from, the stub SFT stage)."""
    calls: dict[str, list] = {"generate": [], "train": [], "eval": [], "generate_from": [], "train_from": []}
    storage.write_json({"metrics": {"reward_sampled": 0.0}}, storage.baseline_dir(cfg) / "manifest.json")

    def generate(cfg: Config, round_idx: int) -> dict:
        calls["generate"].append(round_idx)
        calls["generate_from"].append(storage.policy_for_round(cfg, round_idx, role="generate")[0])
        return {}

    def train(cfg: Config, round_idx: int) -> dict:
        calls["train"].append(round_idx)
        calls["train_from"].append(storage.policy_for_round(cfg, round_idx, role="train")[0])
        manifest = {"stage": "train", "round": round_idx, "config_hash": f"model{round_idx}", "files": {}}
        storage.write_json(manifest, storage.round_dir(cfg, round_idx) / "model" / "manifest.json")
        return manifest

    def evaluate(cfg: Config, round_idx: int, force: bool = False) -> dict:
        calls["eval"].append(round_idx)
        metrics = {"reward_sampled": 0.1 * round_idx, "ppl_ratio": ppl_ratios[round_idx], "kl_per_token": kl}
        manifest = {"stage": "eval", "round": round_idx, "metrics": metrics}
        storage.write_json(manifest, storage.round_dir(cfg, round_idx) / "eval" / "manifest.json")
        return manifest

    monkeypatch.setattr(rounds_module, "generate", generate)
    monkeypatch.setattr(rounds_module, "score", lambda cfg, round_idx: {})
    monkeypatch.setattr(rounds_module, "select", lambda cfg, round_idx: {})
    monkeypatch.setattr(rounds_module, "evaluate", evaluate)
    return calls, train


def test_guard_stops_the_run_when_the_ppl_ratio_crosses_its_bound(tmp_path, monkeypatch, capsys) -> None:
    cfg = drift_config(tmp_path, max_ppl_ratio=1.2)
    calls, train = fake_run(cfg, monkeypatch, [1.05, 1.1, 1.5, 1.6, 1.7])

    results = run_rounds(cfg, 5, train)

    assert calls["eval"] == [0, 1, 2] and calls["generate"] == [0, 1, 2]  # nothing after the drifted round
    assert [m["ppl_ratio"] for m in results] == [1.05, 1.1, 1.5]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rounds:")]
    model_1 = storage.round_dir(cfg, 1) / "model"
    assert lines == [
        f"rounds: stopping after round 2: ppl_ratio 1.5 > rounds.max_ppl_ratio 1.2 in round 2; last model within "
        f"bounds: round 1: {model_1}"
    ]
    # a rerun sees the same evals and stops at the same round
    calls["eval"].clear()
    run_rounds(cfg, 5, train)
    assert calls["eval"] == [0, 1, 2]


def test_kl_bound_and_no_bound(tmp_path, monkeypatch, capsys) -> None:
    cfg = drift_config(tmp_path / "kl", max_kl_per_token=0.05)
    calls, train = fake_run(cfg, monkeypatch, [9.0, 9.0], kl=0.2)
    assert len(run_rounds(cfg, 2, train)) == 1  # round 0 drifted from the base model already
    assert f"last model within bounds: the base model {cfg.model.name_or_path}" in capsys.readouterr().out

    free = drift_config(tmp_path / "free")  # no bound: the guard is off whatever the metrics
    calls, train = fake_run(free, monkeypatch, [9.0, 9.0, 9.0], kl=5.0)
    assert len(run_rounds(free, 3, train)) == 3


def test_rollback_starts_the_next_round_from_the_last_model_within_bounds(tmp_path, monkeypatch, capsys) -> None:
    cfg = drift_config(tmp_path, max_ppl_ratio=1.2, on_drift="rollback")
    calls, train = fake_run(cfg, monkeypatch, [1.1, 1.5, 1.6, 1.15, 1.3])

    results = run_rounds(cfg, 5, train)

    assert len(results) == 5
    model = {r: str(storage.round_dir(cfg, r) / "model") for r in range(5)}
    # rounds 1 and 2 drifted: rounds 2 and 3 start from round 0's model, round 4 from round 3's
    expected = [cfg.model.name_or_path, model[0], model[0], model[0], model[3]]
    assert calls["generate_from"] == expected and calls["train_from"] == expected
    out = capsys.readouterr().out
    assert (
        f"ppl_ratio 1.5 > rounds.max_ppl_ratio 1.2 in round 1: rolled back, round 2 starts from round 0: {model[0]}"
        in out
    )
    assert out.count("rolled back") == 3


def test_a_bound_on_a_metric_the_eval_lacks_is_an_error(tmp_path, monkeypatch) -> None:
    cfg = drift_config(tmp_path, max_kl_per_token=0.1)
    calls, train = fake_run(cfg, monkeypatch, [1.0])
    real = rounds_module.evaluate

    def without_kl(cfg: Config, round_idx: int, force: bool = False) -> dict:
        manifest = real(cfg, round_idx)
        del manifest["metrics"]["kl_per_token"]
        return manifest

    monkeypatch.setattr(rounds_module, "evaluate", without_kl)
    with pytest.raises(StageError, match=r"rounds.max_kl_per_token=0.1 is set, but the eval of round 0 has no"):
        run_rounds(cfg, 1, train)


def test_ppl_bound_needs_a_reference_column(tmp_path) -> None:
    cfg = drift_config(tmp_path, max_ppl_ratio=1.2)
    cfg.eval.reference_column = None
    with pytest.raises(ConfigError, match=r"rounds.max_ppl_ratio=1.2 needs eval.reference_column"):
        run_rounds(cfg, 1, lambda cfg, round_idx: {})


@pytest.mark.parametrize(
    ("key", "value"), [("max_ppl_ratio", float("nan")), ("on_drift", "retry"), ("replay_fraction", -0.1)]
)
def test_bad_rounds_values_name_the_field(tmp_path, key: str, value: object) -> None:
    from raft_data.config import config_from_dict

    data = {"model": {"name_or_path": "m"}, "prompts": {"path": "p.jsonl"}, "rounds": {key: value}}
    with pytest.raises(ConfigError, match=rf"rounds\.{key}="):
        config_from_dict(data)
