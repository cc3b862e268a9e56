"""A catalogue of bad inputs across every command. Each one must exit with status 2 and exactly one line on stderr
that names the file, field or value, without a traceback; and none may leave anything behind that changes the
next run: after the whole catalogue the experiment it ran against ends, with good inputs, byte-identical to a
clean one."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raft_data import storage
from raft_data.cli.main import main as raft_data
from raft_data.cli.sft import main as raft_sft
from raft_data.config import Config
from raft_data.stages.generate import generate
from raft_data.stages.score import score
from raft_data.stages.select import select

from .conftest import make_config

SETTINGS = {
    "prompts": {"n_prompts": 6},
    "generate": {"n_samples": 2, "max_new_tokens": 6, "n_shards": 2},
    "sft": {"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 32},
    "eval": {"n_prompts": 2, "n_samples": 1},
}


class World:
    """Files the bad inputs point at: a good config, its experiment, and broken variants of each input."""

    def __init__(self, tmp: Path, model: Path, prompts: Path) -> None:
        self.tmp, self.model, self.prompts = tmp, model, prompts
        self.cfg = make_config(tmp, model, prompts, experiment={"name": "catalogue"}, **SETTINGS)
        self.config = self.write("good.yaml", self.cfg.to_yaml())

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def broken_model(self, name: str, change) -> Path:
        folder = self.tmp / name
        if not folder.exists():
            shutil.copytree(self.model, folder)
            change(folder)
        return folder


def setup_files(w: World) -> dict[str, str]:
    """Every broken input of the catalogue, by the name the cases below use."""
    lines = w.prompts.read_text().splitlines()
    return {
        "missing": str(w.tmp / "missing.yaml"),
        "not_yaml": str(w.write("not_yaml.yaml", "experiment: [unclosed\n")),
        "a_list": str(w.write("a_list.yaml", "- experiment\n- model\n")),
        "latin1": str(w.write("latin1.yaml", b"experiment:\n  name: caf\xe9\n")),
        "twice": str(w.write("twice.yaml", "experiment:\n  name: a\n  name: b\n")),
        "bad_section": str(w.write("bad_section.yaml", "experiment: 3\n")),
        "prompts_txt": str(w.write("prompts.txt", "a prompt\n")),
        "bad_json": str(w.write("bad.jsonl", lines[0] + "\n{oops\n")),
        "no_rows": str(w.write("empty.jsonl", "\n")),
        "not_text": str(w.write("not_text.jsonl", json.dumps({"id": "x", "prompt": 3}) + "\n")),
        "two_texts": str(w.write("two_texts.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')),
        "sql_two": str(w.write("two.sql", "select * from candidates; select 1")),
        "sql_delete": str(w.write("delete.sql", "delete from candidates")),
        "sql_param": str(w.write("param.sql", "select * from candidates where reward > $nope")),
        "a_file": str(w.write("a_file", "not a folder")),
        "broken_config": str(w.broken_model("m1", lambda d: (d / "config.json").write_text("{not json"))),
        "empty_config": str(w.broken_model("m2", lambda d: (d / "config.json").write_text("{}"))),
        "no_tokenizer": str(w.broken_model("m3", lambda d: [p.unlink() for p in d.glob("tokenizer*")])),
    }


def cases(w: World, f: dict[str, str]) -> list[tuple[str, list[str], str]]:
    """(id, argv, what the one line must name). `raft-sft` cases start with "raft-sft"."""
    c = str(w.config)

    def g(*overrides: str) -> list[str]:  # round 3 from the base model: nothing there is finished
        return ["generate", "--config", c, "--round", "3", "rounds.mode=offline", *overrides]

    def s(*overrides: str) -> list[str]:  # round 2 holds samples and no scores
        return ["score", "--config", c, "--round", "2", *overrides]

    rew = "score.reward=tests.rewards_for_tests:"
    return [
        # the config file
        ("config-missing", ["generate", "--config", f["missing"]], "missing.yaml does not exist"),
        ("config-not-yaml", ["generate", "--config", f["not_yaml"]], "not_yaml.yaml is not valid YAML"),
        ("config-a-list", ["score", "--config", f["a_list"]], "a_list.yaml must hold a mapping"),
        ("config-latin1", ["select", "--config", f["latin1"]], "latin1.yaml is not UTF-8"),
        ("config-key-twice", ["status", "--config", f["twice"]], "key 'name' is written twice"),
        ("config-section-not-mapping", ["config", "--config", f["bad_section"]], "section experiment=3"),
        # overrides
        ("override-section", g("foo.bar=1"), "unknown section in override 'foo.bar=1'"),
        ("override-key", g("generate.n_sample=3"), "unknown key generate.n_sample"),
        ("override-form", g("n_samples=3"), "override 'n_samples=3' is invalid"),
        ("override-type", g("generate.n_samples=many"), "generate.n_samples='many'"),
        ("override-bool", g("generate.chat_template=maybe"), "generate.chat_template='maybe'"),
        # experiment, model, prompts
        ("name-dotdot", g("experiment.name=.."), "experiment.name='..'"),
        ("name-slash", g("experiment.name=a/b"), "experiment.name='a/b'"),
        ("output-root-file", g(f"experiment.output_root={f['a_file']}"), "cannot create the folder"),
        ("dtype", g("model.dtype=int8"), "model.dtype='int8'"),
        ("model-missing", g(f"model.name_or_path={w.tmp / 'nope'}"), "is not a model folder"),
        ("model-broken-config", g(f"model.name_or_path={f['broken_config']}"), "is not a valid JSON file"),
        ("model-empty-config", g(f"model.name_or_path={f['empty_config']}"), "could not be loaded"),
        ("model-no-tokenizer", g(f"model.name_or_path={f['no_tokenizer']}"), "tokenizer could not be loaded"),
        ("n-prompts", g("prompts.n_prompts=0"), "prompts.n_prompts=0"),
        ("heldout-fraction", g("prompts.heldout_fraction=1.5"), "prompts.heldout_fraction=1.5"),
        ("prompts-missing", g(f"prompts.path={w.tmp / 'nope.jsonl'}"), "nope.jsonl does not exist"),
        ("prompts-type", g(f"prompts.path={f['prompts_txt']}"), "unknown type '.txt'"),
        ("prompts-column", g("prompts.prompt_column=text"), "has no field 'text'"),
        ("prompts-bad-json", g(f"prompts.path={f['bad_json']}"), "line 2 is not valid JSON"),
        ("prompts-empty", g(f"prompts.path={f['no_rows']}", "prompts.id_column=null"), "no prompts in column"),
        ("prompts-not-text", g(f"prompts.path={f['not_text']}"), "field 'prompt' is 3, not text"),
        ("prompts-id-twice", g(f"prompts.path={f['two_texts']}"), "id='a' is given twice (rows 0 and 1) with two"),
        # generate
        ("k", g("generate.n_samples=0"), "generate.n_samples=0"),
        ("temperature", g("generate.temperature=-1"), "generate.temperature=-1"),
        ("top-p", g("generate.top_p=1.5"), "generate.top_p=1.5"),
        ("top-k", g("generate.top_k=-1"), "generate.top_k=-1"),
        ("max-new-tokens", g("generate.max_new_tokens=0"), "generate.max_new_tokens=0"),
        ("batch-size", g("generate.batch_size=0"), "generate.batch_size=0"),
        ("n-shards", g("generate.n_shards=0"), "generate.n_shards=0"),
        ("device", g("generate.device=tpu"), "generate.device='tpu'"),
        ("long-prompts", g("generate.long_prompts=drop"), "generate.long_prompts='drop'"),
        ("executor", g("executor.kind=slurmx"), "executor.kind='slurmx'"),
        ("ray-data-replicas", g("executor.ray_data_replicas=0"), "executor.ray_data_replicas=0"),
        ("ray-data-openai", g("executor.kind=ray_data", "generate.backend=openai"), "does not run under ray_data"),
        ("api-base", g("generate.api_base=ftp://x"), "generate.api_base='ftp://x'"),
        ("api-endpoint", g("generate.api_endpoint=embeddings"), "generate.api_endpoint='embeddings'"),
        ("backend", g("generate.backend=nope"), "generate.backend='nope' is unknown"),
        ("source-policy", g("generate.extra_sources=[{name: policy, path: a.jsonl}]"), "a name other than 'policy'"),
        ("source-file", g("generate.extra_sources=[{name: r, path: nope.jsonl}]"), "nope.jsonl does not exist"),
        ("shard-range", [*g(), "--shard", "9"], "--shard=9 is invalid"),
        ("num-shards", [*g(), "--shard", "0", "--num-shards", "7"], "--num-shards=7 does not match"),
        ("force-shard", [*g(), "--shard", "0", "--force"], "--force with --shard"),
        ("round-negative", [*g(), "--round", "-1"], "--round=-1 is invalid"),
        # score
        ("score-first", ["score", "--config", c, "--round", "5"], "run `raft-data generate --round 5` first"),
        ("reward-unknown", s("score.reward=nope"), "score.reward='nope' is unknown"),
        ("reward-import", s("score.reward=nomodule:fn"), "cannot be imported"),
        ("reward-raises", s(rew + "raises"), "reward 'raises' raised ValueError"),
        ("reward-strings", s(rew + "strings"), "reward 'strings' returned 'high'"),
        ("reward-none", s(rew + "nones"), "reward 'nones' returned None"),
        ("reward-scalar", s(rew + "scalar"), "reward 'scalar' returned 0.5"),
        ("reward-length", s(rew + "too_few"), "reward 'too_few' returned 5 values"),
        ("reward-nan", s(rew + "nan"), "reward 'nan' returned nan"),
        ("score-device", s("score.device=tpu"), "score.device='tpu'"),
        # select, inspect, sql
        ("select-first", ["select", "--config", c, "--round", "7"], "run `raft-data generate --round 7` first"),
        ("strategy", ["select", "--config", c, "select.strategy=nope"], "select.strategy='nope' is unknown"),
        ("select-n", ["select", "--config", c, "select.n=0"], "select.n=0"),
        ("select-alpha", ["select", "--config", c, "select.alpha=2"], "select.alpha=2"),
        ("select-format", ["select", "--config", c, "select.format=xml"], "select.format='xml'"),
        ("custom-no-file", ["select", "--config", c, "select.strategy=custom"], "custom together with"),
        ("sql-file-missing", ["select", "--config", c, "select.strategy=custom", "select.sql_file=no.sql"], "no.sql"),
        ("sql-two", ["select", "--config", c, "select.strategy=custom", f"select.sql_file={f['sql_two']}"], "got 2"),
        (
            "sql-delete",
            ["select", "--config", c, "select.strategy=custom", f"select.sql_file={f['sql_delete']}"],
            "DELETE",
        ),
        (
            "sql-param",
            ["select", "--config", c, "select.strategy=custom", f"select.sql_file={f['sql_param']}"],
            "$nope",
        ),
        ("where-column", ["select", "--config", c, "select.where=nope > 1"], "select.where/select.qualify"),
        ("where-statement", ["select", "--config", c, "select.where=1) ; drop view samples; select (1"], "one SQL"),
        ("rank-by", ["select", "--config", c, "select.rank_by=nope"], "select.rank_by='nope' is not a column"),
        ("sql-write", ["sql", "delete from samples", "--config", c], "expected one select query"),
        ("sql-table", ["sql", "select * from nope", "--config", c], "nope"),
        ("inspect-examples", ["inspect", "--config", c, "--examples", "-1"], "--examples must be >= 0"),
        ("inspect-first", ["inspect", "--config", c, "--round", "8"], "run `raft-data generate --round 8` first"),
        # sft
        ("sft-first", ["raft-sft", "train", "--config", c, "--round", "9"], "run `raft-data select --round 9` first"),
        (
            "sft-lr",
            ["raft-sft", "train", "--config", c, "--round", "4", "sft.learning_rate=abc"],
            "sft.learning_rate='abc'",
        ),
        (
            "sft-batch",
            ["raft-sft", "train", "--config", c, "--round", "4", "sft.per_device_train_batch_size=0"],
            "_batch_size=0",
        ),
        (
            "sft-epochs",
            ["raft-sft", "train", "--config", c, "--round", "4", "sft.max_steps=-1", "sft.num_train_epochs=-1"],
            "=-1",
        ),
        ("sft-unknown", ["raft-sft", "train", "--config", c, "--round", "4", "sft.nope=1"], "unknown key sft.nope"),
        ("sft-output-dir", ["raft-sft", "train", "--config", c, "--round", "4", "sft.output_dir=x"], "sft.output_dir"),
        ("lora-r", ["raft-sft", "train", "--config", c, "--round", "4", "lora.r=-1"], "lora.r=-1"),
        (
            "distill-glob",
            ["raft-sft", "train", "--config", c, "--data", "nope-*", "--model", "m", "--output", "o"],
            "matches nothing",
        ),
        (
            "distill-half",
            ["raft-sft", "train", "--config", c, "--data", str(w.tmp), "--model", "m", "--output", "o"],
            "not a finished selected",
        ),
        ("distill-args", ["raft-sft", "train", "--config", c, "--data", str(w.tmp)], "needs all of --data, --model"),
        (
            "student-layers",
            ["raft-sft", "student", "--teacher", str(w.model), "--layers", "99", "--output", "o"],
            "--layers=99",
        ),
        ("raft-sft-command", ["raft-sft", "frobnicate"], "unknown command 'frobnicate'"),
        # eval, rounds, report and the tools
        ("eval-first", ["eval", "--config", c, "--round", "9"], "run `raft-sft train --round 9` first"),
        ("eval-n", ["eval", "--config", c, "eval.n_prompts=0"], "eval.n_prompts=0"),
        ("rounds-n", ["rounds", "0", "--config", c], "N=0 is invalid"),
        ("rounds-mode", ["rounds", "1", "--config", c, "rounds.mode=sideways"], "rounds.mode='sideways'"),
        ("report-empty", ["report", "--config", c], "has no finished eval"),
        ("command", ["frobnicate"], "unknown command 'frobnicate'"),
        ("logprob-model", ["logprob", "--model", str(w.tmp / "nope"), "a", "b"], "is not a model folder"),
        ("reward-model-path", ["reward", "--model", str(w.tmp / "nope"), "a", "b"], "is not a model folder"),
        (
            "heldout-model",
            ["heldout", "--config", c, "--model", str(w.tmp / "nope"), "prompts.heldout_fraction=0.5"],
            "is not a model folder",
        ),
        ("prompts-tool", ["prompts", "--config", c, "prompts.n_prompts=0"], "prompts.n_prompts=0"),
        ("chat-tool", ["chat", "--config", c, f"model.name_or_path={w.tmp / 'nope'}"], "is not a model folder"),
        ("status-round", ["status", "--config", c, "--round", "-1"], "--round=-1 is invalid"),
    ]


PROGRESS = re.compile(r"\d+%\|")  # a progress bar (tqdm), drawn on stderr before the error


def tree(root: Path) -> dict[str, bytes]:
    """Every file of every finished stage folder (one with a manifest.json) under root, path -> bytes."""
    out = {}
    for manifest in sorted(root.rglob("manifest.json")):
        for path in sorted(manifest.parent.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def read_shards(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in storage.shard_files(folder)])


def test_the_catalogue_of_bad_inputs(tmp_path, tiny_model_dir, prompts_file, capsys) -> None:
    w = World(tmp_path, tiny_model_dir, prompts_file)
    files = setup_files(w)
    cfg: Config = w.cfg
    offline = dataclasses.replace(cfg, rounds=dataclasses.replace(cfg.rounds, mode="offline"))
    generate(cfg, 0)  # the select, sql, inspect and sft cases stand on round 0, the reward cases on round 2
    score(cfg, 0)
    generate(offline, 2)
    for stage in (generate, score, select):  # the sft cases stand on round 4
        stage(offline, 4)
    all_cases = cases(w, files)
    if importlib.util.find_spec("vllm") is None:
        vllm = ["generate", "--config", str(w.config), "--round", "3", "rounds.mode=offline", "generate.backend=vllm"]
        all_cases.append(("vllm-missing", vllm, "needs vLLM"))
    assert len(all_cases) >= 60
    failures = []
    for case_id, argv, fragment in all_cases:
        before = tree(tmp_path / "runs")
        capsys.readouterr()
        main = raft_sft if argv[0] == "raft-sft" else raft_data
        try:
            main(argv[1:] if argv[0] == "raft-sft" else argv)
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        err_lines = [line for line in out.err.splitlines() if line.strip() and not PROGRESS.search(line)]
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if len(err_lines) != 1 or not err_lines[0].startswith("error: "):
            problems.append(f"{len(err_lines)} stderr lines")
        if "Traceback" in out.err:
            problems.append("a traceback")
        if fragment not in out.err:
            problems.append(f"no {fragment!r}")
        if tree(tmp_path / "runs") != before:
            problems.append("changed a finished artifact")
        if problems:
            failures.append(f"{case_id}: {', '.join(problems)}: {out.err.strip()[-300:]!r}")
    assert not failures, f"{len(failures)} of {len(all_cases)} cases:\n" + "\n".join(failures)

    # Nothing the catalogue left behind changes the next run: the experiment ends as a clean one does.
    clean = make_config(tmp_path, tiny_model_dir, prompts_file, experiment={"name": "clean"}, **SETTINGS)
    clean_offline = dataclasses.replace(clean, rounds=offline.rounds)
    for c, off in ((cfg, offline), (clean, clean_offline)):
        if c is clean:
            generate(c, 0)
            score(c, 0)
            generate(off, 2)
            for stage in (generate, score, select):
                stage(off, 4)
        select(c, 0)
        score(off, 2)
        generate(off, 3)
    for round_idx, folder in (
        (0, "samples"),
        (0, "scores"),
        (0, "selected"),
        (2, "scores"),
        (3, "samples"),
        (4, "selected"),
    ):
        ours, theirs = storage.round_dir(cfg, round_idx) / folder, storage.round_dir(clean, round_idx) / folder
        assert read_shards(ours).equals(read_shards(theirs)), (round_idx, folder)
