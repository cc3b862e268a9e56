"""Selection, `raft-data inspect` and `raft-data sql` on a real round: samples from the tiny model, VADER rewards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.config import Config
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select
from raft_sft.train import train

from .conftest import REVIEW_OPENINGS, make_config
from .test_select_strategies import brute_guards, brute_select, selected_keys


@pytest.fixture(scope="module")
def real_round(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Config]:
    """Rounds 0 and 1 of the tiny model (round 1 after one SFT step): 10 prompts x K=4, 6 new tokens, scored."""
    tmp = tmp_path_factory.mktemp("real-round")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i:03d}", "prompt": t}) + "\n" for i, t in enumerate(REVIEW_OPENINGS))
    )
    cfg = make_config(
        tmp,
        tiny_model_dir,
        prompts,
        prompts={"n_prompts": 10},
        generate={"n_samples": 4, "max_new_tokens": 6, "n_shards": 2, "temperature": 1.5},
        sft={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 32},
    )
    generate(cfg, 0)
    score(cfg, 0)
    select(cfg, 0)
    train(cfg, 0)  # round 1 samples from round 0's model
    generate(cfg, 1)
    score(cfg, 1)
    path = tmp / "experiment.yaml"
    path.write_text(cfg.to_yaml())
    return path, cfg


def read_shards(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in storage.shard_files(folder)])


def real_rows(cfg: Config, rounds: list[int]) -> list[dict]:
    rows = []
    for r in rounds:
        rdir = storage.round_dir(cfg, r)
        samples = read_shards(rdir / "samples").to_pylist()
        rewards = {(s["prompt_id"], s["sample_idx"]): s for s in read_shards(rdir / "scores").to_pylist()}
        rows += [s | rewards[(s["prompt_id"], s["sample_idx"])] for s in samples]
    return rows


def with_select(cfg: Config, tmp_path: Path, reselect: int = 1, **select_cfg: object) -> Config:
    """A copy of the experiment (its rounds copied to tmp_path) with other select settings, without the selection of
    round `reselect` (round 1 has none; without round 0's, its model and round 1's samples are stale)."""
    new = Config(**{**cfg.__dict__})
    new.experiment = type(cfg.experiment)(name="copy", output_root=str(tmp_path / "runs"), seed=cfg.experiment.seed)
    new.select = type(cfg.select)(**select_cfg)
    shutil.copytree(storage.experiment_dir(cfg), storage.experiment_dir(new))
    shutil.rmtree(storage.round_dir(new, reselect) / "selected", ignore_errors=True)
    return new


@pytest.mark.parametrize(
    "select_cfg",
    [
        {"strategy": "best_per_prompt"},
        {"strategy": "top_n_per_prompt", "n": 2},
        {"strategy": "global_top", "alpha": 0.3},
        {"strategy": "threshold", "tau": 0.2},
        {"strategy": "cumulative"},
        {"strategy": "best_per_prompt", "drop_truncated": True, "drop_empty": True, "drop_duplicates": True},
        {"strategy": "best_per_prompt", "drop_constant": True, "min_margin": 0.05},
    ],
    ids=lambda c: "-".join(str(v) for v in c.values()),
)
def test_strategies_and_guards_on_a_real_round(real_round, tmp_path: Path, select_cfg: dict) -> None:
    _, base = real_round
    cfg = with_select(base, tmp_path, **select_cfg)
    manifest = select(cfg, 1)
    rows = real_rows(cfg, [0, 1] if select_cfg["strategy"] == "cumulative" else [1])
    expected = brute_select(rows, cfg.select, 1, cfg.generate.n_samples)
    assert selected_keys(cfg, 1) == expected
    # the untrained tiny model never stops before max_new_tokens: drop_truncated leaves nothing, others keep rows
    assert bool(expected) != cfg.select.drop_truncated
    _, dropped = brute_guards(rows, cfg.select)
    assert {k: manifest["dropped"][k] for k in dropped} == dropped
    card = (storage.round_dir(cfg, 1) / "selected" / "README.md").read_text()
    assert f"| selected | {len(expected)} |" in card
    assert f"strategy: {select_cfg['strategy']}" in card


def test_inspect_prints_counts_quantiles_and_examples(real_round, tmp_path: Path, capsys) -> None:
    config_path, base = real_round
    cfg = with_select(base, tmp_path, reselect=0, min_margin=0.05)
    config_path = tmp_path / "copy.yaml"
    config_path.write_text(cfg.to_yaml())
    select(cfg, 0)
    capsys.readouterr()
    raft_data(["inspect", "--config", str(config_path), "--round", "0", "--examples", "2"])
    out = capsys.readouterr().out
    rows = real_rows(cfg, [0])
    manifest = storage.read_json(storage.round_dir(cfg, 0) / "selected" / "manifest.json")
    _, dropped = brute_guards(rows, cfg.select)
    assert dropped["margin"] > 0
    assert f"dropped before ranking: margin {dropped['margin']}" in out
    quantiles = {line.split()[0] + line.split()[1]: line.split() for line in out.splitlines() if " of K " in line}
    best = [max(r["reward"] for r in rows if r["prompt_id"] == p) for p in {r["prompt_id"] for r in rows}]
    assert quantiles["bestof"][3] == str(len(best))
    assert float(quantiles["bestof"][-2]) == pytest.approx(max(best), abs=1e-4)
    selected_line = next(line for line in out.splitlines() if line.strip().startswith("selected "))
    assert selected_line.split()[1] == str(manifest["counts"]["selected"])
    all_line = next(line for line in out.splitlines() if line.strip().startswith("all samples"))
    assert all_line.split()[2] == str(len(rows))
    first = sorted({r["prompt_id"] for r in rows})[:2]
    for pid in first:
        assert f"prompt {pid}:" in out
    sample_lines = [line for line in out.splitlines() if line.startswith("  kept") or line.startswith("  drop:")]
    assert len([line for line in sample_lines if line.startswith("  kept")]) <= 2
    assert len(sample_lines) + sum(1 for line in out.splitlines() if line.startswith("  - ")) == 2 * 4


def test_sql_command_runs_a_query_over_the_round(real_round, tmp_path: Path, capsys) -> None:
    config_path, cfg = real_round
    select(cfg, 0)
    capsys.readouterr()
    query = (
        "select count(*) as n_samples, count(distinct prompt_id) as n_prompts, "
        "(select count(*) from selected) as n_selected, (select count(*) from prompts) as n_round_prompts "
        "from samples join scores using (prompt_id, sample_idx, round)"
    )
    raft_data(["sql", query, "--config", str(config_path), "--round", "0", "select.drop_truncated=false"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["n_samples", "n_prompts", "n_selected", "n_round_prompts"]
    assert lines[2].split() == ["40", "10", "10", "10"]
    assert lines[3] == "(1 of 1 rows)"
    raft_data(
        ["sql", "select prompt_id, reward from selected order by prompt_id", "--config", str(config_path), "--csv"]
    )
    csv = capsys.readouterr().out.splitlines()
    table = read_shards(storage.round_dir(cfg, 0) / "selected").sort_by("prompt_id")
    assert csv[0] == '"prompt_id","reward"'
    assert [line.split(",")[0].strip('"') for line in csv[1:]] == table["prompt_id"].to_pylist()


@pytest.mark.parametrize("query", ["copy samples to 'out.csv'", "drop view samples", "select 1; select 2"])
def test_sql_command_refuses_anything_but_one_select(real_round, query: str, capsys) -> None:
    config_path, _ = real_round
    with pytest.raises(SystemExit) as exit_info:
        raft_data(["sql", query, "--config", str(config_path), "--round", "0", "select.drop_truncated=false"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: query: expected one select query")


def test_messages_form_trains_with_trl(real_round, tmp_path: Path, tiny_model_dir: Path) -> None:
    """selected/ in messages form loads with `datasets` and TRL's SFTTrainer trains on it with the chat template."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _, base = real_round
    cfg = with_select(base, tmp_path, reselect=0, format="messages")
    select(cfg, 0)
    folder = storage.round_dir(cfg, 0) / "selected"
    ds = load_dataset("parquet", data_files=str(folder / "shard-*.parquet"), split="train")
    rows = {r["prompt_id"]: r for r in real_rows(cfg, [0])}
    assert len(ds) == len(rows) == 10
    first = ds[0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["messages"][0]["content"] == rows[first["prompt_id"]]["prompt"]
    assert "configs:" in (folder / "README.md").read_text()

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        max_length=64,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=ds.select_columns(["messages"]), processing_class=tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    text = tokenizer.decode(batch["input_ids"][0])
    assert "<|im_start|>user" in text and "<|im_start|>assistant" in text
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed
