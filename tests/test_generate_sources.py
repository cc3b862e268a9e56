"""Candidates from files (human references, another model's outputs) ranked together with the policy's samples."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data import storage
from raft_data.data.prompts import draw_round_prompts
from raft_data.errors import ConfigError, DataError, StageError
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select

from .conftest import REAL_PROMPTS, make_config, require_assets

REFERENCE = {
    "name": "reference",
    "path": str(REAL_PROMPTS),
    "completion_column": "text",  # the snippet's full human-written text: prompt + the rest of the review
    "match": "prompt_id",
    "key_column": "snippet_id",
    "strip_prompt": True,
}


def real_prompts_config(tmp_path, model_dir, sources: list[dict], **generate_fields):
    require_assets()
    return make_config(
        tmp_path,
        model_dir,
        REAL_PROMPTS,
        prompts={"id_column": "snippet_id", "n_prompts": 8},
        generate={"n_samples": 2, "n_shards": 2, "extra_sources": sources, **generate_fields},
    )


def read_samples(cfg) -> pa.Table:
    folder = storage.round_dir(cfg, 0) / "samples"
    return pa.concat_tables([pq.read_table(p) for p in storage.shard_files(folder)])


def test_references_and_another_model_ranked_with_policy(tmp_path, tiny_model_dir):
    prompts_table = pq.read_table(REAL_PROMPTS).to_pydict()
    full_text = dict(zip(prompts_table["snippet_id"], prompts_table["text"], strict=True))
    by_prompt = dict(zip(prompts_table["prompt"], prompts_table["snippet_id"], strict=True))
    # "another model": two outputs per prompt text for every prompt of the source, matched by prompt text
    other = tmp_path / "other_model.jsonl"
    with open(other, "w", encoding="utf-8") as f:
        for prompt in prompts_table["prompt"]:
            for j in range(2):
                f.write(json.dumps({"prompt": prompt, "output": f" is wonderful, a delight ({j})."}) + "\n")
    sources = [REFERENCE, {"name": "other", "path": str(other), "completion_column": "output", "match": "prompt"}]
    cfg = real_prompts_config(tmp_path, tiny_model_dir, sources)
    manifest = generate(cfg, 0)

    samples = read_samples(cfg)
    rows = samples.to_pylist()
    assert manifest["samples_by_source"] == {"other": 16, "policy": 16, "reference": 8}
    assert manifest["input_details"]["source:reference"] == str(REAL_PROMPTS)
    keys = [(r["prompt_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)), "sample_idx must be unique per prompt across sources"
    prompts = pq.read_table(storage.round_dir(cfg, 0) / "prompts.parquet").to_pylist()
    assert len(prompts) == 8
    for p in prompts:
        mine = sorted((r for r in rows if r["prompt_id"] == p["prompt_id"]), key=lambda r: r["sample_idx"])
        assert [r["source"] for r in mine] == ["policy", "policy", "reference", "other", "other"]
        assert [r["sample_idx"] for r in mine] == [0, 1, 2, 3, 4]
        ref = mine[2]
        assert ref["prompt"] + ref["completion"] == full_text[p["prompt_id"]]
        assert ref["n_tokens"] > 0 and not ref["truncated"]
        assert by_prompt[mine[3]["prompt"]] == p["prompt_id"]
        assert mine[4]["completion"] == " is wonderful, a delight (1)."

    # scoring and selection see one pool of candidates per prompt, whatever their source
    score(cfg, 0)
    select(cfg, 0)
    rdir = storage.round_dir(cfg, 0)
    con = duckdb.connect()
    best = con.execute(
        "select s.prompt_id, s.sample_idx, s.source, r.reward from read_parquet(?) s join read_parquet(?) r "
        "using (prompt_id, sample_idx) "
        "qualify row_number() over (partition by prompt_id order by r.reward desc, s.sample_idx) = 1 order by 1",
        [str(rdir / "samples" / "*.parquet"), str(rdir / "scores" / "*.parquet")],
    ).fetchall()
    selected = (
        pq.read_table(next((rdir / "selected").glob("*.parquet")))
        .select(["prompt_id", "sample_idx", "source", "reward"])
        .to_pylist()
    )
    assert [tuple(r.values()) for r in sorted(selected, key=lambda r: r["prompt_id"])] == best


def test_changed_source_file_is_a_new_config(tmp_path, tiny_model_dir, prompts_file):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"prompt_id": "p000", "completion": " good."}) + "\n", encoding="utf-8")
    cfg = make_config(
        tmp_path, tiny_model_dir, prompts_file, generate={"extra_sources": [{"name": "refs", "path": str(refs)}]}
    )
    generate(cfg, 0)
    refs.write_text(json.dumps({"prompt_id": "p000", "completion": " bad."}) + "\n", encoding="utf-8")
    with pytest.raises(StageError, match="another config"):
        generate(cfg, 0)


def test_strip_prompt_needs_the_prompt_first(tmp_path, tiny_model_dir, prompts_file):
    """A bad row for the round's last prompt stops the stage before any shard is written."""
    refs = tmp_path / "refs.jsonl"
    spec = {"name": "refs", "path": str(refs), "strip_prompt": True}
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, generate={"extra_sources": [spec]})
    drawn = draw_round_prompts(cfg.prompts, cfg.experiment.seed, 0).to_pylist()
    rows = [{"prompt_id": p["prompt_id"], "completion": p["prompt"] + " fine."} for p in drawn[:-1]]
    rows.append({"prompt_id": drawn[-1]["prompt_id"], "completion": "Something else"})
    refs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=f"prompt_id='{drawn[-1]['prompt_id']}' does not start with its prompt"):
        generate(cfg, 0)
    assert not storage.shard_files(storage.round_dir(cfg, 0) / "samples")


def test_bad_source_rows_name_file_row_and_column(tmp_path, tiny_model_dir, prompts_file):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"prompt_id": "p000", "completion": 3}) + "\n", encoding="utf-8")
    cfg = make_config(
        tmp_path, tiny_model_dir, prompts_file, generate={"extra_sources": [{"name": "refs", "path": str(refs)}]}
    )
    with pytest.raises(DataError, match=r"refs.jsonl: row 0 column 'completion' is 3"):
        generate(cfg, 0)
    missing = make_config(
        tmp_path, tiny_model_dir, prompts_file, generate={"extra_sources": [{"name": "r", "path": "nope.parquet"}]}
    )
    with pytest.raises(DataError, match="nope.parquet does not exist"):
        generate(missing, 0)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "policy", "path": "a.jsonl"}, "extra_sources[0].name='policy'"),
        ({"name": "r", "path": "a.csv"}, "extra_sources[0].path='a.csv'"),
        ({"name": "r", "path": "a.jsonl", "match": "text"}, "extra_sources[0].match='text'"),
        ({"name": "r", "path": "a.jsonl", "colum": "x"}, "unknown key generate.extra_sources[0].colum"),
        ({"name": "r", "path": "a.jsonl", "max_per_prompt": 0}, "extra_sources[0].max_per_prompt=0"),
        ("a.jsonl", "expected a mapping"),
    ],
)
def test_extra_sources_are_validated(tmp_path, tiny_model_dir, prompts_file, entry, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config(tmp_path, tiny_model_dir, prompts_file, generate={"extra_sources": [entry]})


def test_source_names_are_unique(tmp_path, tiny_model_dir, prompts_file):
    entry = {"name": "r", "path": "a.jsonl"}
    with pytest.raises(ConfigError, match="a name used once"):
        make_config(tmp_path, tiny_model_dir, prompts_file, generate={"extra_sources": [entry, entry]})
