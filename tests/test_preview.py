"""`raft-data preview`: a whole round of the tiny model on a few prompts in a temporary folder, each stage printed,
and the experiment's own folder never touched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from raft_data.cli.main import main

from .conftest import make_config


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_preview_prints_every_stage_and_leaves_the_experiment_alone(
    tmp_path: Path, tiny_model_dir: Path, prompts_file: Path, capsys
) -> None:
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        prompts={"heldout_fraction": 0.3},
        select={"drop_duplicates": True},
        decontam={"drop_contaminated": True, "n": 2},
    )
    path = tmp_path / "exp.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    real = tmp_path / "runs" / "test"
    (real / "round-0000").mkdir(parents=True)
    (real / "round-0000" / "prompts.parquet").write_bytes(b"the real round's file")
    before = tree(real)

    main(["preview", "--config", str(path), "--prompts", "3", "--samples", "2", "generate.max_new_tokens=6"])
    out = capsys.readouterr().out

    sections = ["[generate] 6 samples of 3 prompts", "[score]", "[select] strategy best_per_prompt by reward"]
    for section in [*sections, "[sft] one step on", "[eval] the round's model on", "preview took"]:
        assert section in out, section
    assert re.search(r"guards dropped: duplicate \d+, contaminated \d+", out)
    assert "contamination: " in out and "heldout prompts" in out
    assert re.search(r"rank 1 +reward +-?\d\.\d{4} +s\d +(kept|dropped by)", out)
    assert re.search(r"\[eval\] the round's model on \d held-out prompts .*\n  held-out reward ", out)
    scratch = Path(re.search(r"; in (\S+) \(removed afterwards\)", out).group(1))
    assert not scratch.exists()  # removed
    assert tree(real) == before  # the experiment's own rounds: not read, not written
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["experiment"]["output_root"] == str(tmp_path / "runs")


def test_preview_refuses_bad_counts(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", "--prompts", "0"])
    assert exit_info.value.code == 2
    assert "--prompts: '0' is invalid" in capsys.readouterr().err
