"""The LLM-judge reward: templates, the verdict parser, the config, and scoring a tiny round against a real local
server (tests/model_server.py: a tiny Llama served through transformers, rigged to answer one of 7, 3, yes, no,
maybe, ok), with the answer cache on disk, row errors for answers without a verdict, and a cache that survives
kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft_data import storage
from raft_data.config import JudgeConfig, config_from_dict
from raft_data.errors import ConfigError, UserError
from raft_data.rewards.judge import (
    CACHE_FILE,
    TEMPLATES,
    JudgeAnswerError,
    cache_key,
    judge_prompt,
    open_cache,
    parse_pattern,
    verdict,
)
from raft_data.stages.generate import generate
from raft_data.stages.score import score

from .conftest import make_config
from .model_server import make_judge_model, serving

ROOT = Path(__file__).resolve().parents[1]
PARSE = r"\b(yes|no|\d+)\b"  # the rigged judge's 7 and 3 are scores, yes and no verdicts, maybe and ok neither


@pytest.fixture(scope="module")
def judge_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_judge_model(tiny_model_dir, tmp_path_factory.mktemp("judge-model"))


def judge_component(base: str, **fields: object) -> dict:
    judge = {
        "api_base": base,
        "model": "judge",
        "endpoint": "completions",
        "template": "Review: {prompt}{completion}",  # ends on the completion, so the answer depends on it
        "parse": PARSE,
        "max_tokens": 1,
        "concurrency": 2,
        "backoff_s": 0.01,
        "max_retries": 1,
        **fields,
    }
    return {"judge": judge, "weight": 1.0}


def score_rows(cfg, folder: str = "scores") -> list[dict]:
    rdir = storage.round_dir(cfg, 0) / folder
    return [r for f in storage.shard_files(rdir) for r in pq.read_table(f).to_pylist()]


def sample_rows(cfg) -> list[dict]:
    return [
        r for f in storage.shard_files(storage.round_dir(cfg, 0) / "samples") for r in pq.read_table(f).to_pylist()
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The parser and the templates


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(" 7", 7.0), ("Score: 8/10", 8.0), ("10", 10.0), ("I'd say 3.", 3.0), ("rated 10 out of 10", 10.0)],
)
def test_score_1_10_reads_the_first_score(answer, expected):
    assert verdict(answer, parse_pattern(JudgeConfig(api_base="http://x/v1", model="m"))) == expected


@pytest.mark.parametrize("answer", ["", "excellent", "11", "0", "2.5", "100 points"])
def test_score_1_10_without_a_score_is_an_error_not_zero(answer):
    with pytest.raises(JudgeAnswerError, match="no verdict"):
        verdict(answer, parse_pattern(JudgeConfig(api_base="http://x/v1", model="m")))


@pytest.mark.parametrize(("answer", "expected"), [("Yes.", 1.0), (" no, it is not", 0.0), ("YES", 1.0)])
def test_yes_no_verdicts(answer, expected):
    assert (
        verdict(answer, parse_pattern(JudgeConfig(api_base="http://x/v1", model="m", template="yes_no"))) == expected
    )


def test_a_custom_regex_whose_group_is_no_number_is_an_error():
    pattern = parse_pattern(JudgeConfig(api_base="http://x/v1", model="m", parse=r"verdict: (\w+)"))
    assert verdict("verdict: 4", pattern) == 4.0
    with pytest.raises(JudgeAnswerError, match="neither a number nor yes/no"):
        verdict("verdict: great", pattern)


@given(
    st.integers(1, 10), st.text(alphabet="abc XYZ:!?,\n", max_size=20), st.text(alphabet="abc XYZ!?\n", max_size=20)
)
def test_score_1_10_finds_any_score_between_words(n, before, after):
    pattern = parse_pattern(JudgeConfig(api_base="http://x/v1", model="m"))
    assert verdict(f"{before} {n} {after}", pattern) == float(n)


@given(st.text(max_size=40), st.text(max_size=40))
def test_the_template_holds_prompt_and_completion_verbatim(prompt, completion):
    text = judge_prompt("P<{prompt}> C<{completion}>", prompt, completion)
    assert text == f"P<{prompt}> C<{completion}>"


def test_the_cache_key_changes_with_each_part_and_not_with_the_parser():
    base = JudgeConfig(api_base="http://x/v1", model="m")
    key = cache_key(base, "p", "c")
    assert cache_key(JudgeConfig(api_base="http://x/v1", model="m", parse=r"(\d)"), "p", "c") == key
    for changed in ({"model": "n"}, {"template": "yes_no"}, {"temperature": 0.5}, {"max_tokens": 4}, {"seed": 1}):
        assert cache_key(JudgeConfig(**{"api_base": "http://x/v1", "model": "m", **changed}), "p", "c") != key
    assert cache_key(base, "p2", "c") != key and cache_key(base, "p", "c2") != key


def test_built_in_templates_are_the_configs_names():
    from raft_data.config.sections import JUDGE_TEMPLATES

    assert set(TEMPLATES) == set(JUDGE_TEMPLATES)
    for text, _ in TEMPLATES.values():
        assert "{prompt}" in text and "{completion}" in text


# ---------------------------------------------------------------------------------------------------------------------
# The config


def test_a_judge_component_round_trips_through_yaml(tmp_path, prompts_file):
    component = {**judge_component("http://127.0.0.1:9/v1", template="yes_no"), "name": "verdict"}
    del component["judge"]["parse"]
    cfg = make_config(tmp_path, tmp_path / "m", prompts_file, score={"reward": [component]})
    import yaml

    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.score.reward == cfg.score.reward and again.score.reward[0]["judge"]["template"] == "yes_no"
    from raft_data.config import reward_component_name

    assert reward_component_name(again.score.reward[0]) == "verdict"


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ({"api_base": "localhost:8000", "model": "m"}, "score.reward[0].judge.api_base='localhost:8000' is invalid"),
        ({"api_base": "http://x/v1"}, "score.reward[0].judge.model='' is invalid"),
        ({"api_base": "http://x/v1", "model": "m", "template": "rate it"}, "score.reward[0].judge.template="),
        ({"api_base": "http://x/v1", "model": "m", "parse": "("}, "score.reward[0].judge.parse='(' is invalid"),
        ({"api_base": "http://x/v1", "model": "m", "parse": r"\d"}, "a group around the verdict"),
        ({"api_base": "http://x/v1", "model": "m", "temprature": 0}, "unknown key score.reward[0].judge.temprature"),
        ({"api_base": "http://x/v1", "model": "m", "concurrency": 0}, "score.reward[0].judge.concurrency=0"),
    ],
)
def test_bad_judge_fields_are_one_line_errors_naming_the_field(tmp_path, prompts_file, judge, message):
    with pytest.raises(ConfigError) as e:
        make_config(tmp_path, tmp_path / "m", prompts_file, score={"reward": [{"judge": judge}]})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_component_takes_one_of_ref_model_or_judge(tmp_path, prompts_file):
    both = {"ref": "vader", "judge": {"api_base": "http://x/v1", "model": "m"}}
    with pytest.raises(ConfigError, match="exactly one of ref, model or judge"):
        make_config(tmp_path, tmp_path / "m", prompts_file, score={"reward": [both]})


# ---------------------------------------------------------------------------------------------------------------------
# Against the real local server


@pytest.fixture
def judged_round(tmp_path, tiny_model_dir, prompts_file):
    """A generated tiny round (8 prompts x 3 samples in 3 shards) and a function that makes its config."""
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, executor={"max_failed_fraction": 1.0})
    generate(cfg, 0)

    def with_judge(base: str, **fields: object):
        return make_config(
            tmp_path,
            tiny_model_dir,
            prompts_file,
            score={"reward": [judge_component(base, **fields)]},
            executor={"max_failed_fraction": 1.0},
        )

    return with_judge


def test_judge_scores_a_round_caches_answers_and_a_rerun_asks_nothing(judged_round, judge_model_dir):
    with serving(judge_model_dir) as (server, base):
        cfg = judged_round(base)
        score(cfg, 0)
        samples = sample_rows(cfg)
        texts = {judge_prompt("Review: {prompt}{completion}", s["prompt"], s["completion"]) for s in samples}
        assert len(server.requests) == len(texts)  # one request per distinct sample, none twice
        pattern = parse_pattern(JudgeConfig(api_base=base, model="judge", parse=PARSE))
        rows = score_rows(cfg)
        n_failed = 0
        for s, r in zip(samples, rows, strict=True):
            answer = server.answers[judge_prompt("Review: {prompt}{completion}", s["prompt"], s["completion"])]
            try:
                expected = verdict(answer, pattern)
            except JudgeAnswerError:
                n_failed += 1  # an answer without a verdict: a row error, no reward, never a silent 0
                assert r["reward"] is None and r["judge"] is None and "has no verdict" in r["error"]
            else:
                assert r["reward"] == r["judge"] == expected and r["error"] is None
        assert 0 < n_failed < len(rows)  # both kinds of answer occur on this round
        manifest = storage.read_json(storage.round_dir(cfg, 0) / "scores" / "manifest.json")
        assert manifest["counts"]["failed"] == n_failed
        assert manifest["reward"][0]["judge"]["model"] == "judge"

        before = len(server.requests)
        again = score(cfg, 0, force=True)  # every row scored again: answers that parsed come from the cache
        unparsed = {
            judge_prompt("Review: {prompt}{completion}", s["prompt"], s["completion"])
            for s, r in zip(samples, rows, strict=True)
            if r["error"] is not None
        }
        assert len(server.requests) - before == len(unparsed)  # only answers without a verdict are asked again
        assert score_rows(cfg) == rows and again["counts"] == manifest["counts"]

        # --retry-failed asks again for the failed rows alone; a greedy judge answers them as before, and a retry
        # that fails on every row it redoes is a broken reward: the stage stops with the answer in one line
        before = len(server.requests)
        with pytest.raises(UserError, match="has no verdict matching") as e:
            score(cfg, 0, retry_failed=True)
        assert "\n" not in str(e.value) and 0 < len(server.requests) - before <= len(unparsed)
        assert {text for _, body in server.requests[before:] for text in [body["prompt"]]} <= unparsed

    cfg = judged_round("http://127.0.0.1:9/v1")  # another endpoint is another cache key: nothing is reused
    with pytest.raises(UserError, match="reward 'judge' raised BackendError"):
        score(cfg, 0, force=True)


def test_a_rerun_in_another_process_makes_zero_requests(tmp_path, judged_round, tiny_model_dir):
    clean = make_judge_model(tiny_model_dir, tmp_path / "clean-judge", words=("7", "3", "yes", "no"))
    with serving(clean) as (server, base):
        cfg = judged_round(base)
        score(cfg, 0)
        rows = score_rows(cfg)
        assert all(r["error"] is None for r in rows) and {r["judge"] for r in rows} <= {0.0, 1.0, 3.0, 7.0}
        asked = len(server.requests)
        assert asked == len({(s["prompt"], s["completion"]) for s in sample_rows(cfg)})
        config_path = tmp_path / "exp.yaml"
        config_path.write_text(cfg.to_yaml(), encoding="utf-8")
        cmd = [sys.executable, "-m", "raft_data", "score", "--config", str(config_path), "--round", "0", "--force"]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(server.requests) == asked  # every answer came from <experiment>/judge-cache.sqlite
        assert score_rows(cfg) == rows
    assert (storage.experiment_dir(cfg) / CACHE_FILE).exists()


def test_an_endpoint_that_answers_nothing_stops_the_stage_with_one_line(judged_round):
    cfg = judged_round("http://127.0.0.1:9/v1")  # nothing listens on port 9
    with pytest.raises(UserError) as e:
        score(cfg, 0)
    assert "Connection refused" in str(e.value) or "failed after 2 attempts" in str(e.value)
    assert not list((storage.round_dir(cfg, 0) / "scores").glob("*.parquet"))


# ---------------------------------------------------------------------------------------------------------------------
# kill -9 while answers are written


WRITER = """
import sys
from pathlib import Path
from raft_data.rewards.judge import cache_store, open_cache
con = open_cache(Path(sys.argv[1]))
batch = 0
while True:
    cache_store(con, {f"{batch}-{i}": f"answer {batch} {i} " + "x" * 200 for i in range(200)})
    batch += 1
"""


def test_a_writer_killed_mid_batch_leaves_a_readable_cache_of_whole_batches(tmp_path):
    path = tmp_path / CACHE_FILE
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # wait until a few batches are in
            if path.exists():
                try:
                    with sqlite3.connect(path, timeout=10) as probe:
                        if probe.execute("select count(*) from answers").fetchone()[0] >= 600:
                            break
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    con = open_cache(path)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    rows = con.execute("select key, answer from answers").fetchall()
    batches: dict[str, int] = {}
    for key, answer in rows:
        b, i = key.split("-")
        assert answer == f"answer {b} {i} " + "x" * 200
        batches[b] = batches.get(b, 0) + 1
    assert len(batches) >= 3 and set(batches.values()) == {200}  # whole batches only


def test_the_chat_endpoint_sends_messages_and_reads_the_message(judge_model_dir):
    from raft_data.rewards.judge import judge_reward

    with serving(judge_model_dir) as (server, base):
        cfg = JudgeConfig(api_base=base, model="judge", endpoint="chat", template="yes_no", parse=PARSE, max_tokens=1)
        fn = judge_reward(cfg)  # no cache folder: nothing written to disk
        prompts, completions = ["The film", "A plot"], [" was fine.", " made no sense"]
        try:
            values = fn(prompts, completions)
        except JudgeAnswerError:
            values = None
        assert [path for path, _ in server.requests] == ["/v1/chat/completions"] * 2
        texts = [judge_prompt(TEMPLATES["yes_no"][0], p, c) for p, c in zip(prompts, completions, strict=True)]
        sent = sorted(body["messages"][0]["content"] for _, body in server.requests)  # concurrent: any order
        assert sent == sorted(texts) and all(len(body["messages"]) == 1 for _, body in server.requests)
        answers = [server.answers[t] for t in texts]
        pattern = parse_pattern(cfg)
        try:
            expected = [verdict(a, pattern) for a in answers]
        except JudgeAnswerError:
            expected = None
        assert values == expected and fn.stats["requests"] == 2
