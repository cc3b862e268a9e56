"""The sweep: the Pareto front on known points, grid files good and bad, variants run as their own experiments with
a shared baseline, and the frontier page, on fake eval manifests (no model runs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from raft_data import storage
from raft_data.cli.main import main
from raft_data.config import Config, config_hash
from raft_data.errors import ConfigError
from raft_data.report import hacking_flags
from raft_data.stages.evaluate import baseline_model_id, eval_stage_config
from raft_data.tools.sweep import (
    SweepGrid,
    frontier_points,
    load_grid,
    mark_fronts,
    pareto_front,
    run_sweep,
    variant_configs,
    write_frontier,
)

from .fake_rounds import fake_config

# ---------------------------------------------------------------------------------------------------------------------
# The Pareto front: maximise reward, minimise drift


def test_pareto_front_marks_exactly_the_non_dominated_points() -> None:
    points = [
        (0.30, 0.0),  # 0 the base model: least drift
        (0.50, 0.2),  # 1 on the front
        (0.45, 0.3),  # 2 dominated by 1 (less reward, more drift)
        (0.70, 0.5),  # 3 on the front
        (0.70, 0.6),  # 4 dominated by 3 (same reward, more drift)
        (0.20, 0.0),  # 5 dominated by 0 (same drift, less reward)
        (0.50, 0.2),  # 6 equal to 1: neither dominates the other
        (0.90, 2.0),  # 7 the most reward: on the front however far it drifted
    ]
    assert pareto_front(points) == [True, True, False, True, False, False, True, True]
    assert pareto_front([]) == []
    assert pareto_front([(0.1, 0.1)]) == [True]


def test_pareto_front_on_random_points_against_the_definition() -> None:
    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.randrange(5) / 4, rng.randrange(5) / 4) for _ in range(rng.randrange(1, 12))]
        marks = pareto_front(points)
        front = [p for p, on in zip(points, marks, strict=True) if on]
        for p, on in zip(points, marks, strict=True):
            better = [q for q in points if q[0] >= p[0] and q[1] <= p[1] and q != p]
            assert on == (not better)
            if not on:  # anything off the front is beaten by a point on it
                assert any(q[0] >= p[0] and q[1] <= p[1] for q in front)
        # along the front, more drift always buys more reward
        ordered = sorted(set(front), key=lambda q: q[1])
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(ordered, ordered[1:], strict=False))


# ---------------------------------------------------------------------------------------------------------------------
# Reward-hacking flags on fake metric rows


def _row(label: str, **metrics: float) -> dict:
    return {"label": label, "round": None if label == "base" else int(label), "metrics": metrics}


def test_hacking_flags_name_the_round_and_the_reason() -> None:
    rows = [
        _row("base", second_reward_sampled=0.20, distinct_2=0.96, ppl_ratio=1.0),
        # round 0 has no round before it with a training reward: only its ppl_ratio can flag it
        _row("0", reward_all=0.30, reward_selected=0.60, second_reward_sampled=0.10, distinct_2=0.95, ppl_ratio=1.1),
        # training reward up, second reward and distinct-2 up too: fine
        _row("1", reward_all=0.35, reward_selected=0.62, second_reward_sampled=0.20, distinct_2=0.96, ppl_ratio=1.2),
        # training reward up, distinct-2 down: flagged; ppl_ratio above 1.3: flagged too
        _row("2", reward_all=0.40, reward_selected=0.61, second_reward_sampled=0.25, distinct_2=0.90, ppl_ratio=1.5),
        # training reward down while everything else falls: not a hack, just worse
        _row("3", reward_all=0.30, reward_selected=0.50, second_reward_sampled=0.10, distinct_2=0.80, ppl_ratio=1.25),
        # selected reward up, second reward down; distinct-2 unknown
        _row("4", reward_all=0.30, reward_selected=0.55, second_reward_sampled=0.05, ppl_ratio=None),
    ]
    flags = dict(hacking_flags(rows))
    assert list(flags) == ["2", "4"]
    assert "reward_all 0.350 -> 0.400" in flags["2"] and "distinct_2 0.960 -> 0.900" in flags["2"]
    assert "reward_selected" not in flags["2"]  # it fell: only the rises are named
    assert "ppl_ratio 1.50 > 1.3" in flags["2"]
    assert "reward_selected 0.500 -> 0.550" in flags["4"] and "second_reward_sampled 0.100 -> 0.050" in flags["4"]
    assert [label for label, _ in hacking_flags(rows, ppl_ratio_max=1.05)] == ["0", "1", "2", "3", "4"]
    assert hacking_flags(rows[:1]) == []


def test_hacking_flags_ignore_a_fall_within_the_noise() -> None:
    base = _row("base", distinct_2=0.960, distinct_2_se=0.010, second_reward_sampled=0.20, ppl_ratio=1.0)
    rows = [
        base,
        _row("0", reward_all=0.3, distinct_2=0.950, distinct_2_se=0.010, ppl_ratio=1.0),
        # training reward up, distinct-2 down by 0.020 < 2 * hypot(0.010, 0.010) = 0.028: noise
        _row("1", reward_all=0.4, distinct_2=0.930, distinct_2_se=0.010, ppl_ratio=1.0),
        # down by 0.030 > 0.028: flagged, with the margin named
        _row("2", reward_all=0.5, distinct_2=0.900, distinct_2_se=0.010, ppl_ratio=1.0),
        # without standard errors on both sides any fall counts, as before
        _row("3", reward_all=0.6, distinct_2=0.899, ppl_ratio=1.0),
    ]
    flags = dict(hacking_flags(rows))
    assert list(flags) == ["2", "3"]
    assert "distinct_2 0.930 -> 0.900 (beyond noise, 0.028)" in flags["2"]


# ---------------------------------------------------------------------------------------------------------------------
# Grid files


def _grid_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_grid_reads_variants(tmp_path: Path) -> None:
    grid = load_grid(_grid_file(tmp_path, "n_rounds: 2\nvariants:\n  plain:\n  slow: [sft.learning_rate=1.0e-5]\n"))
    assert grid.n_rounds == 2 and grid.variants == {"plain": [], "slow": ["sft.learning_rate=1.0e-5"]}


@pytest.mark.parametrize("grid_file", sorted((Path(__file__).parents[1] / "pipelines" / "sweeps").glob("*.yaml")))
def test_committed_grids_load_with_the_default_experiment(grid_file: Path) -> None:
    """Every grid in pipelines/sweeps/ is valid, and so is every variant's config (checked before anything runs)."""
    root = Path(__file__).parents[1]
    grid = load_grid(grid_file)
    configs = variant_configs(str(root / "pipelines" / "imdb_positive.yaml"), [], grid)
    assert set(configs) == set(grid.variants)
    assert len({cfg.experiment.name for cfg in configs.values()}) == len(configs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n_rounds: 0\nvariants: {a: []}\n", "n_rounds=0 is invalid"),
        ("n_rounds: two\nvariants: {a: []}\n", "n_rounds='two' is invalid"),
        ("n_rounds: 1\nvariants: []\n", "variants=[] is invalid"),
        ("n_rounds: 1\n", "variants=None is invalid"),
        ("n_rounds: 1\nvariants: {'a b': []}\n", "variant name 'a b' is invalid"),
        ("n_rounds: 1\nvariants: {a: sft.learning_rate=1e-5}\n", "variants.a='sft.learning_rate=1e-5' is invalid"),
        ("n_rounds: 1\nvariants: {a: [learning_rate=1e-5]}\n", "expected section.key=value"),
        ("n_rounds: 1\nvariants: {a: [experiment.name=x]}\n", "names each variant's experiment itself"),
        ("n_rounds: 1\nrounds: 2\nvariants: {a: []}\n", "unknown key 'rounds'"),
        ("[1, 2]\n", "must hold a mapping"),
        ("n_rounds: [1\n", "is not valid YAML"),
    ],
)
def test_bad_grid_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_grid(_grid_file(tmp_path, text))


def test_grid_checks_in_post_init() -> None:
    with pytest.raises(ConfigError, match=r"grid: n_rounds=True is invalid"):
        SweepGrid(n_rounds=True, variants={"a": []})


# ---------------------------------------------------------------------------------------------------------------------
# Running variants on fake eval manifests


def _base_file(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(fake_config(tmp_path).to_yaml(), encoding="utf-8")
    return path


def fake_rounds_fn(calls: list[tuple[str, int]]):
    """A stand-in for the rounds loop: writes a baseline eval (when missing, with the hash the eval stage gives it)
    and one eval manifest per round, with metrics that grow with the learning rate and the round; sampling below
    temperature 1 doubles the drift for the same reward."""

    def run(cfg: Config, n_rounds: int) -> None:
        calls.append((cfg.experiment.name, n_rounds))
        base = storage.baseline_dir(cfg)
        if not (base / "manifest.json").exists():
            chash = config_hash(eval_stage_config(cfg, baseline_model_id(cfg), None))
            metrics = {"reward_sampled": 0.3, "kl_per_token": 0.0, "ppl_ratio": 1.0, "entropy": 3.0}
            storage.write_json(
                {"config_hash": chash, "metrics": metrics, "written_by": cfg.experiment.name}, base / "manifest.json"
            )
        lr = cfg.sft.get("learning_rate", 1e-4)
        scale = 1.0 if cfg.generate.temperature == 1.0 else 2.0
        for r in range(n_rounds):
            step = (r + 1) * lr * 1e4  # 1e-4: 1, 2, ...; 1e-5: 0.1, 0.2, ...
            metrics = {
                "reward_sampled": 0.3 + 0.1 * step,
                "kl_per_token": 0.05 * step**2 * scale,
                "ppl_ratio": 1 + 0.2 * step * scale,
                "entropy": 3.0 - 0.1 * step,
                "distinct_2": 0.95,
                "truncation_rate": 1.0,
            }
            storage.write_json({"metrics": metrics}, storage.round_dir(cfg, r) / "eval" / "manifest.json")

    return run


def test_sweep_runs_variants_shares_the_baseline_and_writes_the_frontier(tmp_path: Path) -> None:
    config = _base_file(tmp_path)
    grid = load_grid(
        _grid_file(
            tmp_path,
            "n_rounds: 2\nvariants:\n  fast: []\n  slow: [sft.learning_rate=1.0e-5]\n"
            "  cold: [generate.temperature=0.7]\n",
        )
    )
    configs = variant_configs(str(config), ["sft.num_train_epochs=1"], grid)
    assert [c.experiment.name for c in configs.values()] == ["fake_fast", "fake_slow", "fake_cold"]
    assert configs["slow"].sft["learning_rate"] == 1e-5 and configs["fast"].sft["num_train_epochs"] == 1
    calls: list[tuple[str, int]] = []
    run_sweep(configs, grid.n_rounds, fake_rounds_fn(calls))
    assert calls == [("fake_fast", 2), ("fake_slow", 2), ("fake_cold", 2)]
    # slow's baseline measures what fast's did: copied; cold samples at another temperature: its own
    writers = {
        n: storage.read_json(storage.baseline_dir(c) / "manifest.json")["written_by"] for n, c in configs.items()
    }
    assert writers == {"fast": "fake_fast", "slow": "fake_fast", "cold": "fake_cold"}

    out = write_frontier("fake", grid, configs, tmp_path / "page")
    assert (tmp_path / "page" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = out.read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "<td>slow</td>" in page
    table = (tmp_path / "page" / "variants.md").read_text(encoding="utf-8").splitlines()
    assert len(table) == 2 + 2 + 3  # header, separator, two distinct base models, three variants
    by_name = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert "sft.learning_rate=1.0e-5" in by_name["slow"] and " | 2 | " in by_name["slow"]

    points = frontier_points(configs)
    assert [(p["variant"], p["label"]) for p in points] == [
        ("base model", "base"),
        ("fast", "0"),
        ("fast", "1"),
        ("slow", "0"),
        ("slow", "1"),
        ("base model (cold)", "base"),
        ("cold", "0"),
        ("cold", "1"),
    ]
    mark_fronts(points)
    # cold's rounds have fast's rewards for twice the drift; the two base models are equal points, both on the front
    for key in ("kl_per_token", "ppl_ratio"):
        assert [p["variant"] for p in points if not p[f"front_{key}"]] == ["cold", "cold"]
    assert by_name["fast"].endswith("| 0, 1 | 0, 1 |") and by_name["cold"].endswith("|  |  |")

    # resuming: the same sweep again runs every variant's loop again (its stages skip themselves), nothing is lost
    run_sweep(configs, grid.n_rounds, fake_rounds_fn(calls))
    assert len(calls) == 6 and storage.read_json(storage.baseline_dir(configs["slow"]) / "manifest.json")


def test_sweep_command_runs_the_rounds_loop_and_prints_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import raft_data.cli.rounds as cli_rounds

    calls: list[tuple[str, int]] = []
    fake = fake_rounds_fn(calls)
    monkeypatch.setattr(cli_rounds, "run_rounds", lambda cfg, n, train: fake(cfg, n))
    grid = _grid_file(tmp_path, "n_rounds: 1\nvariants:\n  a: []\n  b: [sft.learning_rate=1.0e-5]\n")
    main(["sweep", "--config", str(_base_file(tmp_path)), "--grid", str(grid)])
    out = capsys.readouterr().out
    assert calls == [("fake_a", 1), ("fake_b", 1)]
    assert "| a | (none) | 1 |" in out and "sweep: " in out
    assert (Path(tmp_path / "runs" / "fake_sweep" / "index.html")).exists()
    # --no-run rewrites the page only
    main(["sweep", "--config", str(_base_file(tmp_path)), "--grid", str(grid), "--no-run"])
    assert len(calls) == 2


def test_sweep_command_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = _grid_file(tmp_path, "n_rounds: 1\nvariants:\n  a: [sft.nonsense_field=3]\n  b: [generate.n_samples=0]\n")
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(_base_file(tmp_path)), "--grid", str(grid)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "variant b" in err and "generate.n_samples=0" in err
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(_base_file(tmp_path)), "--grid", str(tmp_path / "missing.yaml")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
