"""The sandbox that runs completions as code: programs that try to escape score 0 and leave the machine and the
run's folders as they were (the parent alive, files unchanged, no process left, the work folder gone), whether the
operating system alone holds them (namespaces, audit hooks off), the audit hooks alone (no namespaces), or both."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft_data.config import ScoreConfig
from raft_data.errors import ConfigError
from raft_data.rewards import sandbox
from raft_data.rewards.code import code_reward
from raft_data.rewards.sandbox import Limits, run_code, run_many

FAST = {"timeout": 1.5, "cpu_seconds": 1, "memory_mb": 256, "file_mb": 1, "processes": 8}
NAMESPACES = sandbox.isolation() == "namespaces"
# (isolation, audit hooks): the OS alone, the hooks alone, both
MODES = [
    pytest.param(
        ("namespaces", False), id="os-only", marks=pytest.mark.skipif(not NAMESPACES, reason="no namespaces")
    ),
    pytest.param(("hooks", True), id="hooks-only"),
    pytest.param(("namespaces", True), id="os-and-hooks", marks=pytest.mark.skipif(not NAMESPACES, reason="no ns")),
]


def sandbox_processes() -> list[int]:
    """Processes running the sandbox's child script, anywhere on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_child.py" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def gone(pids: list[int], seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project folder with a run in it (the parent's working folder), a private temp folder for the sandbox's
    work folders, a secret in the parent's environment, a bystander process; yields what to check afterwards."""
    project, scratch = tmp_path / "project", tmp_path / "scratch"
    run = project / "runs" / "exp" / "round-0000"
    run.mkdir(parents=True)
    scratch.mkdir()
    (run / "manifest.json").write_text('{"ok": true}')
    monkeypatch.chdir(project)
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.setenv("RAFT_TEST_SECRET", "hunter2")
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)

    def snapshot() -> dict:
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(project.rglob("*")) if p.is_file()}

    before = snapshot()
    yield {"run": run, "project": project, "bystander": bystander.pid, "host_tmp": Path("/tmp")}
    assert snapshot() == before, "the run's folder changed"
    assert bystander.poll() is None, "a bystander process was killed"
    assert list(scratch.iterdir()) == [], "a work folder was left behind"
    assert gone(sandbox_processes()), "a sandboxed process outlived its run"
    bystander.kill()
    bystander.wait()


def run_in(mode: tuple[str, bool], monkeypatch: pytest.MonkeyPatch, program: str, tests=("pass",), **limits):
    isolation, hooks = mode
    monkeypatch.setattr(sandbox, "isolation", lambda: isolation)
    return run_code(program, list(tests), limits=Limits(**(FAST | limits | {"hooks": hooks})))


@pytest.mark.parametrize("mode", MODES)
def test_an_infinite_loop_is_stopped(mode, world, monkeypatch) -> None:
    outcome = run_in(mode, monkeypatch, "while True:\n    pass\n")
    assert outcome.status == "timeout" and outcome.passed == 0


@pytest.mark.parametrize("mode", MODES)
def test_an_infinite_loop_out_of_cpu_time_before_the_wall_clock_is_a_timeout(mode, world, monkeypatch) -> None:
    # on an idle machine the CPU-time limit ends the loop first; that is a timeout too, whatever the machine's load
    outcome = run_in(mode, monkeypatch, "while True:\n    pass\n", timeout=30)
    assert outcome.status == "timeout" and outcome.passed == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_fork_bomb_is_contained(mode, world, monkeypatch) -> None:
    program = "import os\nwhile True:\n    os.fork()\n"
    outcome = run_in(mode, monkeypatch, program, processes=8)
    assert not outcome.all_passed and outcome.passed == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_memory_bomb_fails(mode, world, monkeypatch) -> None:
    program = "hoard = []\nwhile True:\n    hoard.append(bytearray(50_000_000))\n"
    assert run_in(mode, monkeypatch, program).passed == 0


@pytest.mark.parametrize("mode", MODES)
def test_writing_outside_the_work_folder_fails(mode, world, monkeypatch, tmp_path) -> None:
    targets = [world["run"] / "manifest.json", world["run"] / "planted.txt", tmp_path / "outside.txt"]
    for target in targets:
        program = f"open({str(target)!r}, 'w').write('owned')\n"
        assert run_in(mode, monkeypatch, program).passed == 0, target
    removal = f"import os\nos.remove({str(world['run'] / 'manifest.json')!r})\n"
    assert run_in(mode, monkeypatch, removal).passed == 0
    assert not (world["run"] / "planted.txt").exists() and not (tmp_path / "outside.txt").exists()
    # /tmp itself: refused by the hooks alone; with namespaces the program's /tmp is its own work folder
    marker = f"raft-escape-{os.getpid()}-{time.monotonic_ns()}"
    outcome = run_in(mode, monkeypatch, f"open('/tmp/{marker}', 'w').write('owned')\n")
    assert not (world["host_tmp"] / marker).exists()
    assert outcome.passed == (0 if mode[0] == "hooks" else 1)


@pytest.mark.parametrize("mode", MODES)
def test_a_socket_reaches_nothing(mode, world, monkeypatch) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'leak')\n"
    try:
        assert run_in(mode, monkeypatch, program).passed == 0
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing arrived
    finally:
        listener.close()


@pytest.mark.parametrize("mode", MODES)
def test_the_parents_secrets_are_out_of_reach(mode, world, monkeypatch) -> None:
    direct = "import os\nassert os.environ['RAFT_TEST_SECRET']\n"
    assert run_in(mode, monkeypatch, direct).passed == 0
    via_proc = (
        "import os\n"
        "found = False\n"
        "for pid in [os.getppid(), *(int(p) for p in os.listdir('/proc') if p.isdigit())]:\n"
        "    try:\n"
        "        found = found or b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "assert found\n"
    )
    assert run_in(mode, monkeypatch, via_proc).passed == 0
    listing = f"import os\nassert 'manifest.json' in os.listdir({str(world['run'])!r})\n"
    if mode[0] == "namespaces":  # hidden under an empty mount; the hooks alone do not stop reading
        assert run_in(mode, monkeypatch, listing).passed == 0


@pytest.mark.parametrize("mode", MODES)
def test_killing_the_parent_or_a_bystander_fails(mode, world, monkeypatch) -> None:
    for program in (
        "import os\nos.kill(os.getppid(), 9)\n",
        f"import os\nos.kill({os.getpid()}, 9)\n",  # the parent by its pid
        f"import os\nos.killpg(os.getpgid({os.getpid()}), 9)\n",  # and its process group
        f"import os\nos.kill({world['bystander']}, 9)\n",
        "import os\nos.kill(0, 9)\n",  # its own group
    ):
        assert run_in(mode, monkeypatch, program).passed == 0, program
    # this process, the sandbox's parent, is still here to assert it; the world fixture checks the bystander


def test_a_process_escaping_into_its_own_session_ends_with_the_run(world, monkeypatch) -> None:
    if not NAMESPACES:
        pytest.skip("only a PID namespace ends every process of the run")
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\ntime.sleep(30)\n"
    outcome = run_in(("namespaces", False), monkeypatch, program, timeout=1.0)
    assert outcome.status == "timeout"
    # the world fixture checks that no sandboxed process is left


# ---------------------------------------------------------------------------------------------------------------------
# Programs that behave


def test_a_correct_solution_passes_and_a_partial_one_gets_its_share(world) -> None:
    tests = ["assert candidate(2) == 4", "assert candidate(-3) == 9", "assert candidate(0) == 0"]
    right = run_code("def square(x):\n    return x * x\n", tests, "square", limits=Limits(**FAST))
    assert (right.passed, right.total, right.status, right.all_passed) == (3, 3, "ok", True)
    partial = run_code("def square(x):\n    return 2 * x\n", tests, "square", limits=Limits(**FAST))
    assert (partial.passed, partial.status, partial.fraction) == (2, "failed", 2 / 3)
    broken = run_code("def square(x) return x\n", tests, "square", limits=Limits(**FAST))
    assert (broken.passed, broken.status, broken.fraction) == (0, "error", 0.0)
    missing = run_code("def cube(x):\n    return x ** 3\n", tests, "square", limits=Limits(**FAST))
    assert missing.status == "error" and missing.passed == 0


def test_a_slow_test_keeps_the_ones_passed_before_it(world) -> None:
    tests = ["assert candidate(1) == 1", "while True:\n    pass", "assert candidate(2) == 2"]
    outcome = run_code("def ident(x):\n    return x\n", tests, "ident", limits=Limits(**FAST))
    assert (outcome.passed, outcome.total, outcome.status) == (1, 3, "timeout")


def test_printed_results_cannot_pass_a_program() -> None:
    program = "print('0 0 pass')\nprint('program pass')\nraise SystemExit(0)\n"
    outcome = run_code(program, ["assert False"], limits=Limits(**FAST))
    assert outcome.passed == 0 and not outcome.all_passed


def test_programs_run_in_parallel_keep_their_order() -> None:
    jobs = [{"program": f"def f():\n    return {i}\n", "tests": [f"assert candidate() == {i % 2}"], "entry_point": "f"}
            for i in range(6)]  # fmt: skip
    outcomes = run_many(jobs, Limits(**FAST), workers=2)
    assert [o.passed for o in outcomes] == [1, 1, 0, 0, 0, 0]


def test_the_reward_columns_and_their_config(world) -> None:
    cfg = ScoreConfig(reward="code_pass", code_timeout=2.0, code_memory_mb=256)
    answer = json.dumps({"tests": ["assert candidate(1) == 2", "assert candidate(5) == 6"], "entry_point": "inc",
                         "prefix": "def inc(x):\n    \"\"\"x + 1\"\"\"\n"})  # fmt: skip
    completions = ["    return x + 1\n", "```python\ndef inc(x):\n    return 2\n```", "    return x +\n"]
    passed = code_reward("code_pass", cfg)([""] * 3, completions, [answer] * 3)
    share = code_reward("code_pass_fraction", cfg)([""] * 3, completions, [answer] * 3)
    assert passed == [1.0, 0.0, 0.0] and share == [1.0, 0.5, 0.0]
    for bad in ({"code_timeout": 0}, {"code_memory_mb": 8}, {"code_workers": -1}):
        with pytest.raises(ConfigError, match="score.code_"):
            ScoreConfig(reward="code_pass", **bad)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_text_scores_within_zero_and_one(text: str) -> None:
    cfg = ScoreConfig(reward="code_pass", code_timeout=2.0, code_memory_mb=256)
    answer = json.dumps({"tests": ["assert candidate() == 1", "assert candidate() != 2"], "entry_point": "f"})
    for name in ("code_pass", "code_pass_fraction"):
        (value,) = code_reward(name, cfg)([""], [text], [answer])
        assert 0.0 <= value <= 1.0


def test_the_child_runs_without_the_parents_site_packages() -> None:
    outcome = run_code("import pytest\n", ["pass"], limits=Limits(**FAST))
    assert outcome.status == "error"  # -I -S: nothing installed is importable, only the standard library
    assert run_code("import json\n", ["pass"], limits=Limits(**FAST)).all_passed
