"""Selection that knows how hard each prompt is: distinct correct solutions per prompt, the pass-rate band, the
pass_rates view, and preference pairs that TRL's DPO trainer reads."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.errors import StageError
from raft_data.selection.engine import round_connection
from raft_data.stages.select import select
from raft_sft.train import train

from .fake_rounds import fake_config, write_round

TEXTS = ["The answer is 8.", "the answer  is 9.", "8", "It is 8", "It is 8", "nine", "", "8 + 0 = 8"]


def answer_rows(rng: random.Random, n_prompts: int, k: int = 6) -> list[dict]:
    """Samples with a `correct` flag (the reward is the flag) and the text each one wrote."""
    rows = []
    for p in range(n_prompts):
        rate = rng.choice([0.0, 0.3, 0.7, 1.0])
        for i in range(k):
            ok = rng.random() < rate
            rows.append(
                {
                    "prompt_id": f"p{p:03d}",
                    "sample_idx": i,
                    "prompt": f"What is {p}?",
                    "completion": rng.choice(TEXTS),
                    "n_tokens": 4,
                    "truncated": False,
                    "reward": float(ok),
                    "correct": float(ok),
                    "round": 0,
                }
            )
    return rows


def selected(cfg) -> list[dict]:
    folder = storage.round_dir(cfg, 0) / "selected"
    return pa.concat_tables(pq.read_table(f) for f in storage.shard_files(folder)).to_pylist()


def path_of(text: str) -> str:
    return re.sub(r"[0-9]+", "0", " ".join(text.strip().lower().split()))


def test_distinct_correct_matches_brute_force(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = answer_rows(rng, 40)
    for n in (1, 2, 3):
        cfg = fake_config(tmp_path / f"n{n}", strategy="distinct_correct", n=n)
        write_round(cfg, 0, rows)
        select(cfg, 0)
        want = []
        for pid in sorted({r["prompt_id"] for r in rows}):
            seen, kept = set(), []
            for r in sorted((r for r in rows if r["prompt_id"] == pid), key=lambda r: (-r["reward"], r["sample_idx"])):
                if r["correct"] == 1 and path_of(r["completion"]) not in seen and len(kept) < n:
                    seen.add(path_of(r["completion"]))
                    kept.append((pid, r["sample_idx"]))
            want += kept
        got = [(r["prompt_id"], r["sample_idx"]) for r in selected(cfg)]
        assert sorted(got) == sorted(want), n


def test_pass_band_drops_prompts_solved_by_all_or_none(tmp_path: Path) -> None:
    rows = answer_rows(random.Random(5), 40)
    cfg = fake_config(tmp_path, strategy="threshold", tau=1.0, min_pass_rate=0.01, max_pass_rate=0.99)
    write_round(cfg, 0, rows)
    manifest = select(cfg, 0)
    rates = {}
    for r in rows:
        rates.setdefault(r["prompt_id"], []).append(r["correct"])
    in_band = {p for p, flags in rates.items() if 0 < sum(flags) < len(flags)}
    assert {r["prompt_id"] for r in selected(cfg)} == {p for p in in_band if sum(rates[p])}
    dropped = sum(len(f) for p, f in rates.items() if p not in in_band)
    assert manifest["dropped"]["pass_band"] == dropped > 0


def test_pass_rates_view(tmp_path: Path) -> None:
    rows = answer_rows(random.Random(6), 10)
    cfg = fake_config(tmp_path)
    write_round(cfg, 0, rows)
    con = round_connection(cfg, 0)
    got = {
        pid: (n, c) for pid, n, c in con.execute("select prompt_id, n_samples, n_correct from pass_rates").fetchall()
    }
    for pid in got:
        flags = [r["correct"] for r in rows if r["prompt_id"] == pid]
        assert got[pid] == (len(flags), sum(flags))


def test_pairs_train_one_dpo_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = answer_rows(random.Random(8), 12)
    cfg = fake_config(tmp_path, format="pairs")
    write_round(cfg, 0, rows)
    manifest = select(cfg, 0)
    pairs = selected(cfg)
    mixed = {
        p for p in {r["prompt_id"] for r in rows} if 0 < sum(r["correct"] for r in rows if r["prompt_id"] == p) < 6
    }
    assert {p["prompt_id"] for p in pairs} == mixed and manifest["counts"]["pairs"] == len(mixed)
    for p in pairs:  # chosen: the lowest-index correct sample; rejected: the highest-index incorrect one
        own = [r for r in rows if r["prompt_id"] == p["prompt_id"]]
        assert p["chosen_sample_idx"] == min(r["sample_idx"] for r in own if r["correct"])
        assert p["rejected_sample_idx"] == max(r["sample_idx"] for r in own if not r["correct"])
        assert p["chosen_reward"] == 1.0 and p["rejected_reward"] == 0.0
    card = (storage.round_dir(cfg, 0) / "selected" / "README.md").read_text()
    assert "`prompt`, `chosen` and `rejected`" in card

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    files = [str(f) for f in storage.shard_files(storage.round_dir(cfg, 0) / "selected")]
    ds = load_dataset("parquet", data_files=files, split="train").select_columns(["prompt", "chosen", "rejected"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        max_length=64,
    )
    result = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer).train()
    assert result.global_step == 1
    assert any(not v.equal(before[k]) for k, v in model.state_dict().items())
    # the SFT stage refuses pairs with one line that says what to use instead
    with pytest.raises(StageError, match="holds preference pairs"):
        train(cfg, 0)
