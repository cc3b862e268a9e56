import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raft_data.config import PromptsConfig
from raft_data.data.prompts import draw_round_prompts, read_prompt_source, split_prompts
from raft_data.errors import DataError

from .conftest import REAL_PROMPTS, require_assets


def test_jsonl_parquet_and_csv_give_the_same_prompts(tmp_path: Path, prompts_file: Path) -> None:
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text("id,prompt\n" + "".join(f'{r["id"]},"{r["prompt"]}"\n' for r in rows))
    tables = [
        read_prompt_source(PromptsConfig(path=str(p), id_column="id"))
        for p in (prompts_file, tmp_path / "p.parquet", tmp_path / "p.csv")
    ]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
    assert tables[0]["prompt_id"][0].as_py() == "p000"


def test_prompt_ids_without_an_id_column_are_stable_hashes(prompts_file: Path) -> None:
    a = read_prompt_source(PromptsConfig(path=str(prompts_file)))
    b = read_prompt_source(PromptsConfig(path=str(prompts_file)))
    assert a["prompt_id"].to_pylist() == b["prompt_id"].to_pylist()
    assert len(set(a["prompt_id"].to_pylist())) == a.num_rows


def test_round_draws_differ_per_round_and_repeat_per_seed(prompts_file: Path) -> None:
    cfg = PromptsConfig(path=str(prompts_file), id_column="id", n_prompts=4, heldout_fraction=0.0)
    r0, r0_again, r1 = (draw_round_prompts(cfg, 0, 0), draw_round_prompts(cfg, 0, 0), draw_round_prompts(cfg, 0, 1))
    assert r0.equals(r0_again)
    assert r0["prompt_id"].to_pylist() != r1["prompt_id"].to_pylist()


def test_heldout_split_is_disjoint_and_never_drawn() -> None:
    require_assets()
    cfg = PromptsConfig(path=str(REAL_PROMPTS), id_column="snippet_id", n_prompts=500, heldout_fraction=0.1)
    train, heldout = split_prompts(cfg)
    held = set(heldout["prompt_id"].to_pylist())
    assert 0.08 < len(held) / (len(held) + train.num_rows) < 0.12
    assert not held & set(train["prompt_id"].to_pylist())
    for round_idx in range(3):
        assert not held & set(draw_round_prompts(cfg, 0, round_idx)["prompt_id"].to_pylist())


@pytest.mark.parametrize(
    "content, column, message",
    [
        (b'{"prompt": "fine"}\n{"text": "no prompt field"}\n', "prompt", "line 2 has no field 'prompt'"),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "prompt", "line 2 is not valid UTF-8"),
        (b'{"prompt": "ok"}\nnot json\n', "prompt", "line 2 is not valid JSON"),
        (b'{"prompt": ""}\n{"prompt": "   "}\n', "prompt", "the prompt set is empty"),
        (b"", "prompt", "the prompt set is empty"),
        (b'{"prompt": 3}\n', "prompt", "row 0 field 'prompt' is 3, not text"),
    ],
)
def test_bad_prompt_files_get_one_line_errors(tmp_path: Path, content: bytes, column: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_prompt_source(PromptsConfig(path=str(path), prompt_column=column))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_missing_column(tmp_path: Path, prompts_file: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_prompt_source(PromptsConfig(path=str(tmp_path / "missing.jsonl")))
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="no column 'prompt'"):
        read_prompt_source(PromptsConfig(path=str(tmp_path / "p.parquet")))
    with pytest.raises(DataError, match="undecodable.csv: byte"):
        (tmp_path / "undecodable.csv").write_bytes(b"prompt\ncaf\xe9\n")
        read_prompt_source(PromptsConfig(path=str(tmp_path / "undecodable.csv")))
