"""Each selection strategy and guard against a brute-force Python version, on random rounds with many ties."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.config import SelectConfig
from raft_data.errors import ConfigError, DataError, StageError
from raft_data.selection.engine import GUARDS
from raft_data.stages import select as select_module
from raft_data.stages.select import select

from .fake_rounds import fake_config, random_rows, relist, write_round

# ---------------------------------------------------------------------------------------------------------------------
# The brute-force reference


def brute_guards(rows: list[dict], s: SelectConfig) -> tuple[list[dict], dict[str, int]]:
    """Apply the enabled guards in order, each to the rows still standing; count what each drops."""
    alive = [dict(r, key=r[s.rank_by]) for r in rows]
    dropped: dict[str, int] = {}

    def drop(name: str, gone: list[dict]) -> None:
        nonlocal alive
        ids = {id(r) for r in gone}
        alive = [r for r in alive if id(r) not in ids]
        dropped[name] = len(gone)

    def by_prompt() -> dict[str, list[dict]]:
        groups = defaultdict(list)
        for r in alive:
            groups[r["prompt_id"]].append(r)
        return groups

    if s.drop_truncated:
        drop("truncated", [r for r in alive if r["truncated"]])
    if s.drop_empty:
        drop("empty", [r for r in alive if not r["completion"].strip()])
    if s.drop_duplicates:
        gone = []
        for group in by_prompt().values():
            seen = set()
            for r in sorted(group, key=lambda r: (r["round"], r["sample_idx"])):
                if r["completion"] in seen:
                    gone.append(r)
                seen.add(r["completion"])
        drop("duplicate", gone)
    if s.drop_constant:
        drop("constant", [r for g in by_prompt().values() if len({r["key"] for r in g}) == 1 for r in g])
    if s.min_margin > 0:
        gone = []
        for group in by_prompt().values():
            keys = sorted((r["key"] for r in group), reverse=True)
            if len(keys) >= 2 and keys[0] - keys[1] < s.min_margin:
                gone += group
        drop("margin", gone)
    return alive, dropped


def brute_select(rows: list[dict], s: SelectConfig, round_idx: int, k: int) -> list[tuple]:
    """The keys (round, prompt_id, sample_idx) each strategy keeps, computed the slow and obvious way."""
    cands, _ = brute_guards(rows, s)
    if s.where == "n_tokens >= 3":
        cands = [r for r in cands if r["n_tokens"] >= 3]
    groups = defaultdict(list)
    for r in cands:
        groups[r["prompt_id"]].append(r)
    local = sorted(groups.values(), key=lambda g: g[0]["prompt_id"])
    if s.strategy == "best_per_prompt":
        kept = [max(g, key=lambda r: (r["key"], -r["sample_idx"])) for g in local]
    elif s.strategy == "top_n_per_prompt":
        kept = [r for g in local for r in sorted(g, key=lambda r: (-r["key"], r["sample_idx"]))[: s.n]]
    elif s.strategy == "global_top":
        alpha = s.alpha if s.alpha is not None else 1 / k
        ranked = sorted(cands, key=lambda r: (-r["key"], r["prompt_id"], r["sample_idx"]))
        kept = ranked[: math.ceil(round(alpha * len(cands), 9))]
    elif s.strategy == "threshold":
        kept = [r for r in cands if r["key"] >= s.tau]
    elif s.strategy == "cumulative":
        this_round = {r["prompt_id"] for r in rows if r["round"] == round_idx}
        kept = [
            min(g, key=lambda r: (-r["key"], r["round"], r["sample_idx"]))
            for g in local
            if g[0]["prompt_id"] in this_round
        ]
    else:
        raise AssertionError(s.strategy)
    return sorted((r["round"], r["prompt_id"], r["sample_idx"]) for r in kept)


def selected_keys(cfg, round_idx: int) -> list[tuple]:
    folder = storage.round_dir(cfg, round_idx) / "selected"
    table = pq.read_table(storage.shard_files(folder)[0])
    return sorted(
        zip(table["round"].to_pylist(), table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True)
    )


def make_rounds(tmp_path: Path, seed: int, n_rounds: int, k: int, **select_cfg) -> tuple:
    rng = random.Random(seed)
    cfg = fake_config(tmp_path / f"seed{seed}", **select_cfg)
    all_rows = []
    for r in range(n_rounds):
        rows = random_rows(rng, r, n_prompts=rng.randrange(1, 15), k=k, levels=rng.choice([2, 3, 5]))
        for row in rows:
            row["round"] = r
        write_round(cfg, r, rows, n_shards=rng.choice([1, 2, 3]))
        all_rows += rows
    return cfg, all_rows


STRATEGY_CASES = [
    {"strategy": "best_per_prompt"},
    {"strategy": "top_n_per_prompt", "n": 2},
    {"strategy": "top_n_per_prompt", "n": 7},
    {"strategy": "global_top"},
    {"strategy": "global_top", "alpha": 0.37},
    {"strategy": "threshold", "tau": 0.5},
    {"strategy": "threshold", "tau": -0.5, "rank_by": "kl_free"},
    {"strategy": "cumulative"},
    {"strategy": "best_per_prompt", "rank_by": "kl_free"},
]
GUARD_CASES = [
    {},
    {"drop_truncated": True},
    {"drop_empty": True},
    {"drop_duplicates": True},
    {"drop_constant": True},
    {"min_margin": 0.6},
    {"drop_truncated": True, "drop_empty": True, "drop_duplicates": True, "drop_constant": True, "min_margin": 0.4},
    {"where": "n_tokens >= 3", "drop_duplicates": True},
]


@pytest.mark.parametrize("case", STRATEGY_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_strategy_matches_brute_force(tmp_path: Path, case: dict) -> None:
    for seed in range(4):
        k = 1 + seed % 5
        cfg, rows = make_rounds(tmp_path, seed, n_rounds=3, k=k, **case)
        cfg.generate.n_samples = k
        manifest = select(cfg, 2)
        expected = brute_select(
            rows if case["strategy"] == "cumulative" else [r for r in rows if r["round"] == 2], cfg.select, 2, k
        )
        assert selected_keys(cfg, 2) == expected, (seed, case)
        assert manifest["counts"]["selected"] == len(expected)


@pytest.mark.parametrize("guards", GUARD_CASES, ids=lambda c: "-".join(c) or "none")
@pytest.mark.parametrize("strategy", ["best_per_prompt", "threshold", "cumulative"])
def test_guards_match_brute_force(tmp_path: Path, guards: dict, strategy: str) -> None:
    for seed in range(3):
        cfg, rows = make_rounds(tmp_path, seed, n_rounds=2, k=4, strategy=strategy, **guards)
        manifest = select(cfg, 1)
        pool = rows if strategy == "cumulative" else [r for r in rows if r["round"] == 1]
        assert selected_keys(cfg, 1) == brute_select(pool, cfg.select, 1, 4), (seed, guards)
        _, dropped = brute_guards(pool, cfg.select)
        expected = {name: dropped[name] for key, name in GUARDS.items() if getattr(cfg.select, key)}
        assert {k: v for k, v in manifest["dropped"].items() if k in expected} == expected


def test_best_per_prompt_is_argmax_with_lowest_index_on_ties(tmp_path: Path) -> None:
    rng = random.Random(7)
    cfg = fake_config(tmp_path)
    rows = []
    for p in range(300):
        rewards = [rng.choice([0.0, 0.25, 1.0]) for _ in range(6)]
        for i, reward in enumerate(rewards):
            rows.append({"prompt_id": f"q{p:03d}", "sample_idx": i, "prompt": "x", "completion": f"c{i}"})
            rows[-1] |= {"n_tokens": 3, "truncated": False, "reward": reward}
    write_round(cfg, 0, rows, n_shards=4)
    select(cfg, 0)
    best = {}
    for r in rows:
        cur = best.get(r["prompt_id"])
        if cur is None or r["reward"] > cur["reward"]:  # strict: the first (lowest sample_idx) maximum stays
            best[r["prompt_id"]] = r
    assert selected_keys(cfg, 0) == sorted((0, p, r["sample_idx"]) for p, r in best.items())


def test_random_per_prompt_ignores_rewards(tmp_path: Path) -> None:
    rng = random.Random(3)
    rows = random_rows(rng, 0, n_prompts=40, k=5)
    cfg_a = fake_config(tmp_path / "a", strategy="random_per_prompt")
    write_round(cfg_a, 0, rows)
    select(cfg_a, 0)
    shuffled = [dict(r, reward=rng.random()) for r in rows]
    cfg_b = fake_config(tmp_path / "b", strategy="random_per_prompt")
    write_round(cfg_b, 0, shuffled)
    select(cfg_b, 0)
    keys = selected_keys(cfg_a, 0)
    assert keys == selected_keys(cfg_b, 0)
    assert sorted({p for _, p, _ in keys}) == sorted({r["prompt_id"] for r in rows})
    best = brute_select(rows, cfg_a.select.__class__(), 0, 5)
    assert keys != best  # 40 prompts of 5 samples: a hash pick equal to the argmax everywhere would be no baseline


def test_cumulative_needs_earlier_rounds(tmp_path: Path) -> None:
    cfg = fake_config(tmp_path, strategy="cumulative")
    write_round(cfg, 1, random_rows(random.Random(0), 1, 5, 3))
    with pytest.raises(StageError, match="round-0000/samples is missing"):
        select(cfg, 1)


def test_rank_by_must_be_a_numeric_scores_column(tmp_path: Path) -> None:
    cfg = fake_config(tmp_path, rank_by="kl_penalty")
    write_round(cfg, 0, random_rows(random.Random(0), 0, 5, 3))
    with pytest.raises(ConfigError, match="select.rank_by='kl_penalty' is not a column of scores/: choose from"):
        select(cfg, 0)
    cfg = fake_config(tmp_path, rank_by="prompt_id")
    with pytest.raises(ConfigError, match="is a VARCHAR column, not a number"):
        select(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "selected").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", 0, "select.n=0 is invalid"),
        ("alpha", 1.5, "select.alpha=1.5 is invalid"),
        ("alpha", 0.0, "select.alpha=0.0 is invalid"),
        ("tau", float("nan"), "select.tau=nan is invalid"),
        ("min_margin", -0.1, "select.min_margin=-0.1 is invalid"),
        ("format", "chatml", "select.format='chatml' is invalid"),
        ("strategy", "custom", "select.strategy='custom' is invalid"),
        ("where", " ", "select.where=' ' is invalid"),
        ("rank_by", "reward; drop", "select.rank_by='reward; drop' is invalid"),
    ],
)
def test_select_config_errors(tmp_path: Path, field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        fake_config(tmp_path, **{field: value})


def test_unknown_strategy_lists_the_known_ones(tmp_path: Path) -> None:
    cfg = fake_config(tmp_path, strategy="best_of_all")
    write_round(cfg, 0, random_rows(random.Random(0), 0, 5, 3))
    with pytest.raises(
        ConfigError, match="best_per_prompt, cumulative, distinct_correct, global_top, random_per_prompt, threshold"
    ):
        select(cfg, 0)


# ---------------------------------------------------------------------------------------------------------------------
# The user's own SQL


def test_where_and_qualify_filter_candidates(tmp_path: Path) -> None:
    rng = random.Random(11)
    rows = random_rows(rng, 0, n_prompts=30, k=4)
    for r in rows:
        r["round"] = 0
    # keep prompts whose mean reward is below 0.5, and samples of at least 3 tokens
    cfg = fake_config(tmp_path, where="n_tokens >= 3", qualify="avg(reward) over (partition by prompt_id) < 0.5")
    write_round(cfg, 0, rows)
    manifest = select(cfg, 0)
    long_rows = [r for r in rows if r["n_tokens"] >= 3]
    means = defaultdict(list)
    for r in long_rows:
        means[r["prompt_id"]].append(r["reward"])
    keep = [r for r in long_rows if sum(means[r["prompt_id"]]) / len(means[r["prompt_id"]]) < 0.5]
    assert selected_keys(cfg, 0) == brute_select(keep, SelectConfig(), 0, 4)
    assert manifest["dropped"]["where/qualify"] == len(rows) - len(keep)


def test_sql_file_is_a_whole_strategy(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = random_rows(rng, 0, n_prompts=25, k=5)
    sql = tmp_path / "longest_good.sql"
    sql.write_text(
        "-- the longest sample per prompt among those with reward >= $tau\n"
        "with good as (select * from candidates where reward >= $tau)\n"
        "select * from good qualify row_number() over (partition by prompt_id order by n_tokens desc, sample_idx) = 1"
    )
    cfg = fake_config(tmp_path, strategy="custom", sql_file=str(sql), tau=0.5)
    write_round(cfg, 0, rows)
    select(cfg, 0)
    best = {}
    for r in sorted(rows, key=lambda r: (-r["n_tokens"], r["sample_idx"])):
        if r["reward"] >= 0.5:
            best.setdefault(r["prompt_id"], r)
    assert selected_keys(cfg, 0) == sorted((0, p, r["sample_idx"]) for p, r in best.items())


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("select * from candidates; copy candidates to 'x.csv'", ConfigError, "expected one select query"),
        ("copy (select 1) to 'x.csv'", ConfigError, "expected one select query"),
        ("select * from candidates where reward > $beta", ConfigError, r"unknown parameter \$beta"),
        ("select * from no_such_view", ConfigError, "no_such_view"),
        ("select * replace (reward + 1 as reward) from candidates", DataError, "not scored samples"),
        ("select prompt_id, reward from candidates", DataError, "has no column 'sample_idx'"),
        ("select * from candidates union all select * from candidates", DataError, "repeats a sample"),
    ],
)
def test_bad_sql_file_is_refused_before_publishing(tmp_path: Path, text: str, error: type, message: str) -> None:
    sql = tmp_path / "mine.sql"
    sql.write_text(text)
    cfg = fake_config(tmp_path, strategy="custom", sql_file=str(sql))
    write_round(cfg, 0, random_rows(random.Random(0), 0, 6, 3))
    with pytest.raises(error, match=message):
        select(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "selected").exists()
    assert not (tmp_path / "x.csv").exists()


def test_built_in_strategy_output_must_be_candidates(tmp_path: Path, monkeypatch) -> None:
    """The data tests hold a built-in strategy's SQL to the same rules: here one that rewrites a reward."""
    cfg = fake_config(tmp_path)
    write_round(cfg, 0, random_rows(random.Random(0), 0, 6, 3))
    broken = "select * replace (case when prompt_id = 'p0000' then reward + 1 else reward end as reward) from ({sql})"
    original = select_module.strategy_sql
    monkeypatch.setattr(select_module, "strategy_sql", lambda c: broken.format(sql=original(c)))
    with pytest.raises(DataError, match="1 selected rows are not candidates"):
        select(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "selected").exists()


@pytest.mark.parametrize("clause", ["true; drop view scores", "$tau > 0", "reward >"])
def test_where_clause_must_be_one_expression(tmp_path: Path, clause: str) -> None:
    cfg = fake_config(tmp_path, where=clause)
    write_round(cfg, 0, random_rows(random.Random(0), 0, 6, 3))
    with pytest.raises(ConfigError, match="select.where/select.qualify"):
        select(cfg, 0)


def test_changing_the_sql_file_is_another_config(tmp_path: Path) -> None:
    sql = tmp_path / "mine.sql"
    sql.write_text("select * from candidates where reward > 0")
    cfg = fake_config(tmp_path, strategy="custom", sql_file=str(sql))
    write_round(cfg, 0, random_rows(random.Random(0), 0, 6, 3))
    select(cfg, 0)
    sql.write_text("select * from candidates where reward > 0.5")
    with pytest.raises(StageError, match="made with another config"):
        select(cfg, 0)


def test_scores_out_of_line_with_samples_are_refused(tmp_path: Path) -> None:
    """scored pairs samples and scores by position; a scores shard in another row order must not slip through."""
    cfg = fake_config(tmp_path)
    write_round(cfg, 0, random_rows(random.Random(2), 0, 8, 3), n_shards=1)
    path = storage.shard_files(storage.round_dir(cfg, 0) / "scores")[0]
    table = pq.read_table(path)
    pq.write_table(table.take(list(range(table.num_rows))[::-1]), path)
    with pytest.raises(DataError, match="is damaged"):  # its checksum no longer matches
        select(cfg, 0)
    relist(path.parent)  # and with the checksum made to agree, the check behind it
    with pytest.raises(DataError, match="scores rows do not line up with their samples rows"):
        select(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "selected").exists()


def test_global_top_keeps_alpha_of_the_candidates_exactly(tmp_path: Path) -> None:
    """0.28 * 25 is 7.000000000000001 in floating point: still 7 rows."""
    cfg = fake_config(tmp_path, strategy="global_top", alpha=0.28)
    rows = random_rows(random.Random(4), 0, n_prompts=5, k=5)
    write_round(cfg, 0, rows)
    assert select(cfg, 0)["counts"]["selected"] == 7
    assert selected_keys(cfg, 0) == brute_select(rows, cfg.select, 0, 2)
