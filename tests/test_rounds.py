"""Many rounds with eval, resume after an interrupted round, rounds modes, and the HTML report, on the tiny model."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.config import Config, load_config
from raft_data.data.prompts import split_prompts
from raft_data.errors import ConfigError, DataError
from raft_data.report import write_report
from raft_data.rounds import run_rounds
from raft_data.storage import baseline_dir, schemas
from raft_sft.train import train

from .conftest import REVIEW_OPENINGS, make_config

EVAL = {"n_prompts": 3, "n_samples": 2, "reference_column": "text", "second_reward": "vader_completion"}


def write_reviews(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(REVIEW_OPENINGS):
            f.write(json.dumps({"id": f"p{i:03d}", "prompt": text, "text": f"{text} a film I will remember."}) + "\n")
    return path


def rounds_config(tmp_path: Path, model_dir: Path, **sections: dict) -> Config:
    prompts = write_reviews(tmp_path / "reviews.jsonl")
    return make_config(
        tmp_path,
        model_dir,
        prompts,
        **{"prompts": {"heldout_fraction": 0.3, "n_prompts": 4}, "generate": {"n_samples": 2, "n_shards": 2}}
        | {"eval": EVAL}
        | sections,
    )


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Config:
    cfg = rounds_config(tmp_path_factory.mktemp("rounds"), tiny_model_dir)
    run_rounds(cfg, 2, train)
    return cfg


def test_two_rounds_write_eval_folders_with_metrics(two_rounds: Config) -> None:
    cfg = two_rounds
    train, heldout = split_prompts(cfg.prompts)
    assert heldout.num_rows >= 1
    n_eval = min(EVAL["n_prompts"], heldout.num_rows)
    folders = [baseline_dir(cfg)] + [storage.round_dir(cfg, r) / "eval" for r in (0, 1)]
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        table = storage.read_eval(folder)[1]
        assert table.schema.equals(schemas.EVAL_COMPLETIONS)
        assert table.num_rows == n_eval * (1 + EVAL["n_samples"])
        # evaluated on held-out prompts only
        assert set(table["prompt_id"].to_pylist()) <= set(heldout["prompt_id"].to_pylist())
        m = manifest["metrics"]
        for key in ("reward_greedy", "reward_sampled", "second_reward_sampled", "perplexity", "distinct_2", "kl"):
            assert m[key] is not None, key
        assert m["perplexity"] > 1
        assert 0 <= m["distinct_1"] <= 1 and 0 <= m["msttr"] <= 1 and 0 <= m["truncation_rate"] <= 1
        for key in ("reward_sampled_se", "second_reward_sampled_se", "distinct_2_se"):
            assert m[key] is not None and m[key] >= 0, key
        rewards = [
            r for r, k in zip(table["reward"].to_pylist(), table["kind"].to_pylist(), strict=True) if k == "sampled"
        ]
        assert m["reward_sampled"] == pytest.approx(sum(rewards) / len(rewards))
    base = json.loads((folders[0] / "manifest.json").read_text())["metrics"]
    assert base["kl"] == 0.0 and base["reward_all"] is None
    for r in (0, 1):
        m = json.loads((folders[r + 1] / "manifest.json").read_text())["metrics"]
        scores = pq.read_table(storage.shard_files(storage.round_dir(cfg, r) / "scores")).to_pylist()
        best: dict[str, float] = {}
        for row in scores:
            best[row["prompt_id"]] = max(best.get(row["prompt_id"], -9.0), row["reward"])
        assert m["reward_all"] == pytest.approx(sum(s["reward"] for s in scores) / len(scores))
        assert m["reward_best_of_k"] == pytest.approx(sum(best.values()) / len(best))
        assert m["reward_selected"] == pytest.approx(m["reward_best_of_k"])  # best_per_prompt keeps the best
        # the training prompts never include a held-out one
        trained = pq.read_table(storage.round_dir(cfg, r) / "prompts.parquet")["prompt_id"].to_pylist()
        assert not set(trained) & set(heldout["prompt_id"].to_pylist())
    # online mode: round 1 samples from round 0's model
    generator = pq.read_table(storage.shard_files(storage.round_dir(cfg, 1) / "samples"))["generator"][0].as_py()
    assert generator.endswith(str(storage.round_dir(cfg, 0) / "model"))


def _png_ok(data: bytes) -> bool:
    import io

    import matplotlib.image

    return data[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(io.BytesIO(data), format="png").size > 0


def test_report_renders_html_with_plots(two_rounds: Config, tmp_path: Path) -> None:
    path = write_report(two_rounds, tmp_path / "report")
    page = path.read_text(encoding="utf-8")
    for name in ("reward.png", "histograms.png", "quality.png"):
        assert _png_ok((tmp_path / "report" / name).read_bytes())
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 3 and all(_png_ok(base64.b64decode(b)) for b in embedded)
    assert page.count("<tr>") >= 4  # header, base, round 0, round 1 in the metrics table at least
    assert "kept" in page and "rejected" in page
    assert "What each round cost" in page and re.search(r"<td>0</td><td>\d+</td><td>[0-9.]+</td><td>\d+</td>", page)
    # the latest model's greedy completions appear in the examples table
    latest = storage.read_eval(storage.round_dir(two_rounds, 1) / "eval")[1].to_pylist()
    import html

    greedy = [r["completion"] for r in latest if r["kind"] == "greedy"]
    assert any(html.escape(c) in page for c in greedy)


def test_report_renders_in_headless_chromium(two_rounds: Config, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    path = write_report(two_rounds, tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,2000"]
        + [path.resolve().as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert _png_ok(shot.read_bytes())


def test_rounds_resume_after_an_interrupted_round(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import raft_data.rounds as rounds_module

    cfg = rounds_config(tmp_path, tiny_model_dir)
    real_evaluate = rounds_module.evaluate

    def interrupted(cfg: Config, round_idx: int, force: bool = False) -> dict:
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C when the round reached its eval

    monkeypatch.setattr(rounds_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_rounds(cfg, 1, train)
    r0 = storage.round_dir(cfg, 0)
    assert (r0 / "model" / "manifest.json").exists() and not (r0 / "eval").exists()
    started = {p: json.loads(p.read_text())["started"] for p in r0.glob("*/manifest.json")}
    assert len(started) == 4  # samples, scores, selected, model
    monkeypatch.setattr(rounds_module, "evaluate", real_evaluate)
    results = run_rounds(cfg, 1, train)
    assert len(results) == 1 and results[0]["reward_sampled"] is not None
    assert (r0 / "eval" / "manifest.json").exists() and (baseline_dir(cfg) / "manifest.json").exists()
    for p, t in started.items():  # nothing finished before the interruption was redone
        assert json.loads(p.read_text())["started"] == t, p


def test_offline_mode_and_sft_from_base_choose_models(tmp_path: Path, tiny_model_dir: Path) -> None:
    base = str(tiny_model_dir)
    for mode, sft_from, want_generate, want_train in (
        ("online", "previous", "prev", "prev"),
        ("offline", "previous", "base", "prev"),
        ("online", "base", "prev", "base"),
        ("offline", "base", "base", "base"),
    ):
        cfg = rounds_config(tmp_path, tiny_model_dir, rounds={"mode": mode, "sft_from": sft_from})
        prev = storage.round_dir(cfg, 0) / "model"
        prev.mkdir(parents=True, exist_ok=True)
        (prev / "manifest.json").write_text(json.dumps({"config_hash": "abc", "files": {}}))
        want = {"prev": str(prev), "base": base}
        assert storage.policy_for_round(cfg, 1, role="generate")[0] == want[want_generate]
        assert storage.policy_for_round(cfg, 1, role="train")[0] == want[want_train]
        assert storage.policy_for_round(cfg, 0, role="train")[0] == base


def test_eval_without_heldout_prompts_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raft_data.data.prompts import eval_prompts

    cfg = rounds_config(tmp_path, tiny_model_dir, prompts={"heldout_fraction": 0.0})
    with pytest.raises(DataError, match="heldout_fraction"):
        eval_prompts(cfg)


def test_rounds_and_eval_config_errors_name_the_key(tmp_path: Path) -> None:
    for override, key in (
        ("rounds.mode=sometimes", "rounds.mode"),
        ("rounds.sft_from=scratch", "rounds.sft_from"),
        ("rounds.patience=-1", "rounds.patience"),
        ("eval.n_prompts=0", "eval.n_prompts"),
        ("eval.n_samples=0", "eval.n_samples"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(None, ["model.name_or_path=m", "prompts.path=p.jsonl", override])


def test_eval_uses_the_weighted_reward_the_score_stage_writes(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`score.reward` as a list of weighted components: eval's `reward` is the same weighted sum."""
    from raft_data.rewards.builtin import length, vader
    from raft_data.stages.evaluate import evaluate_model

    components = [{"ref": "vader", "weight": 0.5}, {"ref": "length", "weight": 0.01}]
    cfg = rounds_config(tmp_path, tiny_model_dir, score={"reward": components})
    evaluate_model(cfg, None)
    table = storage.read_eval(baseline_dir(cfg))[1].to_pydict()
    prompts, completions = table["prompt"], table["completion"]
    expected = [
        0.5 * v + 0.01 * n for v, n in zip(vader(prompts, completions), length(prompts, completions), strict=True)
    ]
    assert table["reward"] == pytest.approx(expected, abs=1e-12)


def test_drift_metrics_per_round_in_status_and_report(two_rounds: Config, tmp_path: Path) -> None:
    from raft_data.tools.status import round_status

    base = json.loads((baseline_dir(two_rounds) / "manifest.json").read_text())
    assert base["reference_digest"]  # what lets each round reuse the base model's perplexity of these texts
    b = base["metrics"]
    assert b["ppl_ratio"] == 1.0 and b["kl_per_token"] == 0.0 and b["entropy"] > 0
    for r in (0, 1):
        m = json.loads((storage.round_dir(two_rounds, r) / "eval" / "manifest.json").read_text())["metrics"]
        assert m["ppl_ratio"] == pytest.approx(m["perplexity"] / b["perplexity"])
        assert m["entropy"] > 0 and m["mean_tokens"] > 0
        # one sum of log-ratios, over sequences and over tokens: their ratio is the mean completion length
        table = storage.read_eval(storage.round_dir(two_rounds, r) / "eval")[1].to_pylist()
        ratios = [row["logp"] - row["ref_logp"] for row in table if row["kind"] == "sampled"]
        assert m["kl"] == pytest.approx(sum(ratios) / len(ratios))
        assert 1 <= m["kl"] / m["kl_per_token"] <= two_rounds.generate.max_new_tokens + 1
    status = "\n".join(round_status(two_rounds, 1))
    assert "kl/token" in status and "ppl ratio" in status and "entropy/token" in status and "truncated" in status
    page = write_report(two_rounds, tmp_path / "report").read_text(encoding="utf-8")
    assert "Reward-hacking flags" in page and "KL/token" in page and "ppl ratio" in page
