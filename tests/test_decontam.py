"""The decontamination guards of the select stage: `contaminated` (a row sharing a word n-gram with evaluation text,
after normalisation) and `near_duplicate` (word-shingle Jaccard against a better-ranked completion of the prompt).
Checked against a brute-force Python version on random rows, and on whole select stages over fake rounds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_data import storage
from raft_data.config import Config, config_from_dict
from raft_data.data.prompts import is_heldout
from raft_data.errors import ConfigError, DataError, StageError
from raft_data.report import decontam_html
from raft_data.selection.engine import decontaminate
from raft_data.stages.select import select
from raft_data.tools.inspect import inspect
from raft_data.tools.status import round_status

from .fake_rounds import write_round

EVAL = "The committee approved the annual budget after a long debate about schools and roads"


def config(tmp_path: Path, select_cfg: dict | None = None, **decontam: object) -> Config:
    return config_from_dict(
        {
            "experiment": {"name": "fake", "output_root": str(tmp_path / "runs")},
            "model": {"name_or_path": "unused"},
            "prompts": {"path": str(tmp_path / "prompts.jsonl"), "id_column": "id", "heldout_fraction": 0.0},
            "generate": {"n_samples": 4},
            "select": select_cfg or {},
            "decontam": decontam,
        }
    )


def eval_file(tmp_path: Path, texts: list[str], name: str = "eval.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def row(pid: str, idx: int, completion: str, reward: float, prompt: str = "Write about the weather") -> dict:
    return {
        "prompt_id": pid,
        "sample_idx": idx,
        "prompt": prompt,
        "completion": completion,
        "n_tokens": 5,
        "truncated": False,
        "reward": reward,
        "round": 0,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The brute-force version: the same normalisation, n-grams and shingles in plain Python


def words(text: str) -> list[str]:
    return re.sub(r"[\W_]+", " ", text.lower()).split()


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def shingles(text: str, k: int) -> set[tuple[str, ...]]:
    w = words(text)
    return ({tuple(w)} if w else set()) if len(w) < k else ngrams(text, k)


def brute_near_duplicates(rows: list[dict], k: int, threshold: float) -> set[tuple[str, int]]:
    """Rows with a better-ranked row of the same prompt (reward desc, round, sample_idx) at Jaccard >= threshold."""
    out = set()
    for pid in {r["prompt_id"] for r in rows}:
        ranked = sorted((r for r in rows if r["prompt_id"] == pid), key=lambda r: (-r["reward"], r["sample_idx"]))
        sets = [shingles(r["completion"], k) for r in ranked]
        for j in range(len(ranked)):
            for i in range(j):
                union = sets[i] | sets[j]
                if union and len(sets[i] & sets[j]) / len(union) >= threshold:
                    out.add((pid, ranked[j]["sample_idx"]))
                    break
    return out


def guard_marks(rows: list[dict], texts: list[str], **decontam: object) -> dict[tuple[str, int], str | None]:
    """decontam/guards.sql alone over `rows` (all standing), each row's dropped_by."""
    cfg = config_from_dict(
        {"model": {"name_or_path": "unused"}, "prompts": {"path": "unused.jsonl"}, "decontam": decontam}
    )
    con = duckdb.connect()
    table = pa.Table.from_pylist([r | {"rank_key": r["reward"]} for r in rows])
    con.register("rows_table", table)
    con.execute("create temp view guarded as select *, null::varchar as dropped_by from rows_table")
    decontaminate(con, cfg, 0, pa.table({"source": ["test"] * len(texts), "text": pa.array(texts, pa.string())}))
    found = con.execute("select prompt_id, sample_idx, dropped_by from guarded").fetchall()
    return {(pid, idx): mark for pid, idx, mark in found}


# ---------------------------------------------------------------------------------------------------------------------
# contaminated

CLEAN = st.text(alphabet="abcdefghijklm", min_size=1, max_size=6)  # disjoint letters: never an evaluation word
EVAL_WORD = st.text(alphabet="nopqrstuvwxyzéü", min_size=1, max_size=6)
SEPARATORS = st.sampled_from([" ", "  ", ", ", " -- ", "\n", "... ", "\t", "!? ", " (", ") "])


@st.composite
def spelled(draw, word_list: list[str]) -> str:
    """Words joined by random punctuation and white space, each in random case: the same text once normalised."""
    out = []
    for i, w in enumerate(word_list):
        case = draw(st.sampled_from([str.lower, str.upper, str.title]))
        out.append(case(w) + (draw(SEPARATORS) if i < len(word_list) - 1 else ""))
    return "".join(out)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 8),
    eval_words=st.lists(EVAL_WORD, min_size=8, max_size=20),
    clean_words=st.lists(CLEAN, min_size=0, max_size=15),
    before=st.lists(CLEAN, max_size=4),
    start=st.integers(0, 12),
    data=st.data(),
)
def test_a_row_is_contaminated_exactly_when_it_shares_an_eval_ngram(
    n: int, eval_words: list[str], clean_words: list[str], before: list[str], start: int, data
) -> None:
    start = min(start, len(eval_words) - n)
    planted = data.draw(spelled(before + eval_words[start : start + n]))
    rows = [
        row("p0", 0, data.draw(spelled(clean_words)) if clean_words else "", 1.0, prompt="abc def"),
        row("p0", 1, planted, 0.5, prompt="abc def"),
        row("p1", 0, "kept text", 0.0, prompt=data.draw(spelled(eval_words[start : start + n]))),
    ]
    marks = guard_marks(rows, [" ".join(eval_words)], drop_contaminated=True, n=n)
    assert marks[("p0", 0)] is None  # shares no n-gram: never dropped
    assert marks[("p0", 1)] == "contaminated"  # holds one under any case and punctuation: always dropped
    assert marks[("p1", 0)] == "contaminated"  # the prompt is checked too


def test_a_shorter_overlap_than_n_is_not_contamination() -> None:
    seven = "approved the annual budget after a long"  # 7 words of EVAL
    rows = [row("p", 0, f"Yes: {seven}.", 1.0), row("p", 1, f"Yes: {seven} debate!", 0.5)]
    marks = guard_marks(rows, [EVAL], drop_contaminated=True)
    assert marks == {("p", 0): None, ("p", 1): "contaminated"}


def test_planted_contamination_is_dropped_and_counted(tmp_path: Path) -> None:
    texts = [EVAL, "Seven brave knights rode north through snow to find the old king's castle"]
    cfg = config(tmp_path, drop_contaminated=True, eval_files=[eval_file(tmp_path, texts)], heldout=False)
    planted = {("p1", 0), ("p2", 3), ("p3", 1), ("p3", 2)}
    rows = []
    for p in range(5):
        for i in range(4):
            text = f"sample {i} of prompt {p} is plain and says nothing special at all here"
            if (f"p{p}", i) in planted:
                text = "As they said: SEVEN brave knights -- rode north, through snow to find... it"
            rows.append(row(f"p{p}", i, text, reward=float(i)))
    write_round(cfg, 0, rows)
    manifest = select(cfg, 0)
    kept = pq.read_table(storage.shard_files(storage.round_dir(cfg, 0) / "selected")[0]).to_pylist()
    assert not {(r["prompt_id"], r["sample_idx"]) for r in kept} & planted
    assert {r["prompt_id"]: r["sample_idx"] for r in kept}["p2"] == 2  # its best sample was contaminated
    found = manifest["decontamination"]
    assert found["checked_rows"] == 20 and found["contaminated_rows"] == 4 and found["dropped"] == 4
    assert found["contaminated_prompts"] == 0 and found["n"] == 8 and found["eval_texts"] == 2
    assert found["eval_files"] == cfg.decontam.eval_files
    assert manifest["dropped"]["contaminated"] == 4
    for stage in ("samples", "scores"):  # fake rounds record no wall time; status prints one
        path = storage.round_dir(cfg, 0) / stage / "manifest.json"
        storage.write_json(storage.read_json(path) | {"wall_time_s": 0.0}, path)
    assert "4 of 20 rows share an n-gram of 8 words" in "\n".join(round_status(cfg, 0))
    page = decontam_html(cfg, [{"round": 0, "label": "0"}])
    assert "4 of 20 rows" in page and "dropped 4" in page
    assert "drop:contaminated" in inspect(cfg, 0, n_examples=4)


def test_heldout_prompts_and_their_references_are_eval_text(tmp_path: Path) -> None:
    opening = "the quiet harbour town woke slowly under a grey sky"
    ids = [f"q{i}" for i in range(40)]
    held = [pid for pid, h in zip(ids, is_heldout(ids, 0.3), strict=True) if h]
    with open(tmp_path / "prompts.jsonl", "w", encoding="utf-8") as f:
        for pid in ids:
            prompt = f"{opening} number {pid}" if pid == held[0] else f"prompt {pid}"
            f.write(json.dumps({"id": pid, "prompt": prompt, "review": f"{pid} review: a b c d e f g"}) + "\n")
    cfg = config(tmp_path, drop_contaminated=True)
    cfg.prompts.heldout_fraction = 0.3
    cfg.eval.reference_column = "review"
    rows = [
        row("t0", 0, f"so {opening.upper()} again", 1.0),  # a held-out prompt's 8-gram
        row("t0", 1, f"{held[1]} review: A, b, c, d, e, f, g", 0.5),  # a held-out reference's 8-gram
        row("t0", 2, "a b c d e f g h i j k", 0.2),  # a reference's words, but none of its 8-grams
    ]
    write_round(cfg, 0, rows)
    manifest = select(cfg, 0)
    assert manifest["dropped"]["contaminated"] == 2
    assert manifest["decontamination"]["eval_files"] == ["heldout prompts", "heldout review"]
    kept = pq.read_table(storage.shard_files(storage.round_dir(cfg, 0) / "selected")[0]).to_pylist()
    assert [r["sample_idx"] for r in kept] == [2]


def test_guards_off_keep_the_selection_hash_and_on_changes_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    write_round(cfg, 0, [row("p", i, f"text {i}", float(i)) for i in range(3)])
    first = select(cfg, 0)
    assert "decontam" not in first["config"] and "decontamination" not in first
    again = select(config(tmp_path, n=5, eval_files=["never/read.jsonl"], near_duplicate_threshold=0.5), 0)
    assert again["config_hash"] == first["config_hash"]  # done: skipped, the off guards' settings are no config
    path = eval_file(tmp_path, [EVAL])
    with pytest.raises(StageError, match="made with another config"):
        select(config(tmp_path, drop_contaminated=True, eval_files=[path]), 0)
    on = select(config(tmp_path, drop_contaminated=True, eval_files=[path]), 0, force=True)
    assert on["decontamination"]["contaminated_rows"] == 0 and on["config_hash"] != first["config_hash"]
    eval_file(tmp_path, [EVAL + " and more"])  # an edited evaluation file is another selection
    with pytest.raises(StageError, match="made with another config"):
        select(config(tmp_path, drop_contaminated=True, eval_files=[path]), 0)


@pytest.mark.parametrize(
    "decontam, message",
    [
        ({"n": 0}, "decontam.n=0 is invalid"),
        ({"near_duplicate_threshold": 0.0}, "decontam.near_duplicate_threshold=0.0 is invalid"),
        ({"shingle": 100}, "decontam.shingle=100 is invalid"),
        ({"eval_files": [""]}, r"decontam.eval_files\[0\]='' is invalid"),
    ],
)
def test_decontam_config_errors(tmp_path: Path, decontam: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **decontam)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.jsonl", None, "does not exist"),
        ("eval.tsv", "a\tb\n", "unknown type '.tsv'"),
        ("eval.jsonl", '{"question": "x"}\n', "has no field 'prompt'"),
        ("eval.jsonl", '{"prompt": 3}\n', "not text"),
    ],
)
def test_bad_eval_files_are_one_line_errors(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / name).write_text(text, encoding="utf-8")
    cfg = config(tmp_path, drop_contaminated=True, eval_files=[str(tmp_path / name)])
    write_round(cfg, 0, [row("p", 0, "text", 1.0)])
    with pytest.raises(DataError, match=message):
        select(cfg, 0)
    assert not (storage.round_dir(cfg, 0) / "selected").exists()


def test_text_file_lines_are_eval_texts(tmp_path: Path) -> None:
    (tmp_path / "eval.txt").write_text(f"\n{EVAL}\n\nshort line\n", encoding="utf-8")
    cfg = config(tmp_path, drop_contaminated=True, eval_files=[str(tmp_path / "eval.txt")])
    write_round(cfg, 0, [row("p", 0, EVAL.lower(), 1.0), row("p", 1, "short line", 0.0)])
    manifest = select(cfg, 0)
    assert manifest["decontamination"]["eval_texts"] == 2 and manifest["dropped"]["contaminated"] == 1


# ---------------------------------------------------------------------------------------------------------------------
# near_duplicate


def test_near_duplicates_by_threshold() -> None:
    base = "one two three four five six seven eight nine ten eleven"  # 7 shingles of 5 words
    plus_one = base + " twelve"  # 8 shingles, 7 shared: Jaccard 7/8
    changed = base.replace("eleven", "zzz").replace("one two", "yyy two")  # shares 5 of 9: Jaccard 5/9
    rows = [row("p", 0, base, 0.1), row("p", 1, plus_one, 0.9), row("p", 2, changed, 0.5), row("q", 0, base, 0.0)]
    at_08 = guard_marks(rows, [], drop_near_duplicates=True)
    # the best-ranked of a pair stays; another prompt's identical text is no duplicate of it
    assert at_08 == {("p", 0): "near_duplicate", ("p", 1): None, ("p", 2): None, ("q", 0): None}
    at_05 = guard_marks(rows, [], drop_near_duplicates=True, near_duplicate_threshold=0.5)
    assert at_05 == {("p", 0): "near_duplicate", ("p", 1): None, ("p", 2): "near_duplicate", ("q", 0): None}
    exact = guard_marks(rows, [], drop_near_duplicates=True, near_duplicate_threshold=1.0)
    assert set(exact.values()) == {None}
    short = [row("p", 0, "Great film!", 1.0), row("p", 1, "great  FILM", 0.5), row("p", 2, "great film ok", 0.2)]
    assert guard_marks(short, [], drop_near_duplicates=True) == {
        ("p", 0): None,
        ("p", 1): "near_duplicate",  # fewer words than a shingle: the whole text is one, and they are equal
        ("p", 2): None,
    }


@settings(max_examples=60, deadline=None)
@given(
    completions=st.lists(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=10), min_size=1, max_size=8),
    rewards=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=8, max_size=8),
    k=st.integers(1, 5),
    threshold=st.sampled_from([0.3, 0.5, 0.8, 1.0]),
)
def test_near_duplicates_match_brute_force(completions, rewards, k: int, threshold: float) -> None:
    rows = [row(f"p{i % 2}", i, " ".join(w), rewards[i]) for i, w in enumerate(completions)]
    marks = guard_marks(rows, [], drop_near_duplicates=True, shingle=k, near_duplicate_threshold=threshold)
    assert {key for key, mark in marks.items() if mark} == brute_near_duplicates(rows, k, threshold)


def test_near_duplicates_keep_distinct_samples_across_rounds(tmp_path: Path) -> None:
    """cumulative pools every round: a later round's near-copy of an earlier better sample is dropped."""
    cfg = config(tmp_path, {"strategy": "cumulative"}, drop_near_duplicates=True)
    text = "the film was a warm and funny story about two old friends"
    write_round(cfg, 0, [row("p", 0, text, 0.9), row("p", 1, "something else entirely, short", 0.1)])
    write_round(cfg, 1, [row("p", 0, text + " indeed", 0.8) | {"round": 1}, row("p", 1, "new", 0.0) | {"round": 1}])
    manifest = select(cfg, 1)
    assert manifest["dropped"] == {"near_duplicate": 1}
    assert manifest["decontamination"] == {"near_duplicates": {"threshold": 0.8, "shingle": 5, "dropped": 1}}


def test_distinct_correct_keeps_distinct_samples(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"strategy": "distinct_correct", "n": 4}, drop_near_duplicates=True)
    texts = ["we add 3 and 4 to get 7 so the answer is 7", "we add 3 and 4 to get 7 so the answer is 7 ok", "7"]
    write_round(cfg, 0, [row("p", i, t, 1.0) | {"correct": 1.0} for i, t in enumerate(texts)])
    manifest = select(cfg, 0)
    kept = pq.read_table(storage.shard_files(storage.round_dir(cfg, 0) / "selected")[0])["sample_idx"].to_pylist()
    assert kept == [0, 2] and manifest["dropped"] == {"near_duplicate": 1}
