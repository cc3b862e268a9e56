"""Run untrusted Python (a model's completion and a problem's tests) in a separate, limited process.

Each run gets a fresh work folder (tempfile, removed afterwards) and a child process of the same Python started as
`python -I -S` (isolated: no site-packages, no PYTHON* variables, no user folders on the path), with only PATH and
LANG in its environment, stdin from /dev/null, in its own session (start_new_session), so it cannot signal the
parent's process group; on the wall-clock timeout the whole group is killed.

What the operating system enforces:
    - resource limits set in the child before the program runs: RLIMIT_CPU (CPU seconds), RLIMIT_AS (address
      space), RLIMIT_FSIZE (largest file written), RLIMIT_NPROC (processes), RLIMIT_CORE 0
    - where `unshare` can create namespaces (as root, and as a normal user where unprivileged user namespaces are
      on): a new user, network, PID and mount namespace. No network interface but a down loopback: nothing can be
      reached, not even localhost. The program is PID 1 of its namespace: it sees no other process, cannot signal
      one, and when it ends or is killed, every process it started ends with it. Every mount is remounted
      read-only, the parent's working folder and HOME are hidden under empty tmpfs mounts, and the work folder is
      the only writable folder, seen as /tmp (the host's /tmp is out of sight). In a user namespace RLIMIT_NPROC
      counts per namespace, so it holds for root too.
What audit hooks (sys.addaudithook, installed before the program runs) refuse, as defence in depth, and the only
guard where namespaces are not available:
    - starting processes (fork, exec, spawn, subprocess, os.system), which would run without the hooks
    - os.kill of any process but itself, os.killpg
    - socket connect, bind, sendto, sendmsg and name look-ups
    - opening a file for writing, and removing, renaming or making files, outside the work folder
    - opening another process's /proc/<pid> files (its environment, memory, open files)
    - ctypes and _posixsubprocess (raw calls around the hooks), adding another audit hook, chdir, putenv
Hooks run inside the program's own interpreter: code written to defeat them (reaching into the interpreter's
internals) could; the namespaces are what hold then. Without namespaces and as root, RLIMIT_NPROC does not apply
and a process that escapes the hooks could signal any process: `isolation()` says which applies, and the score
stage logs it.

The score is reliable against programs that go wrong (loops, bombs, crashes, stray writes), not against a program
written to forge its own test results: its tests run in the same interpreter as the program.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("sandbox_child.py")
MAX_OUTPUT = 1 << 20  # bytes of the child's result stream read; a program cannot flood the parent's memory
CPU_TIME_EXIT = 124  # the child's exit status when its CPU-time limit ran out (sandbox_child.CPU_TIME_EXIT)


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds for the program and all its tests
    cpu_seconds: int = 5  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE
    processes: int = 16  # RLIMIT_NPROC
    hooks: bool = True  # audit hooks as defence in depth (tests turn them off to check the OS alone)


@dataclass(frozen=True)
class Outcome:
    passed: int  # tests passed
    total: int  # tests run or not
    status: str  # ok | failed (a test failed) | error (the program did not run) | timeout

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.status == "ok" and self.total > 0 and self.passed == self.total


def _python() -> str:
    """The interpreter the child runs: the base installation's, so that a virtual environment (possibly in a hidden
    folder) is not needed."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


# new user (root mapped to the caller), network, PID and mount namespaces; the child dies with unshare
UNSHARE = [
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount",
    "--mount-proc",
]


@functools.cache
def isolation() -> str:
    """`namespaces` when `unshare` can give the child new user, network, PID and mount namespaces here and a test
    program passes in them, else `hooks` (resource limits and audit hooks only)."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return "hooks"
    try:
        works = _run_in("namespaces", "ok = 1\n", ["assert ok == 1"], None, "", Limits(timeout=30)).all_passed
    except OSError:
        works = False
    if not works:
        log.warning("sandbox: namespaces are refused here; code runs with resource limits and audit hooks only")
    return "namespaces" if works else "hooks"


def _hidden() -> list[str]:
    """Folders the program must not see: the parent's working folder (the project and its runs) and HOME, unless
    the interpreter lives under one of them."""
    keep = [os.path.realpath(p) for p in (_python(), sys.base_prefix, CHILD, tempfile.gettempdir())]
    out = []
    for path in {os.getcwd(), os.path.expanduser("~")}:
        full = os.path.realpath(path)
        if full != "/" and not any((k + os.sep).startswith(full + os.sep) for k in keep):
            out.append(full)
    return sorted(out)


def _environment() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8")}


def run_code(
    program: str, tests: list[str], entry_point: str | None = None, setup: str = "", limits: Limits | None = None
) -> Outcome:
    """Run `program`, then `setup`, then each test (Python source; `candidate` names the entry point when given)
    in a fresh sandbox; how many tests passed. Never raises for anything the program does."""
    return _run_in(isolation(), program, tests, entry_point, setup, limits or Limits())


def _run_in(mode: str, program: str, tests: list[str], entry_point: str | None, setup: str, limits: Limits) -> Outcome:
    nonce = secrets.token_hex(8)
    workdir = tempfile.mkdtemp(prefix="raft-sandbox-")
    try:
        os.chmod(workdir, 0o700)
        job = {"nonce": nonce, "program": program, "setup": setup, "tests": tests, "entry_point": entry_point}
        Path(workdir, "job.json").write_text(json.dumps(job), encoding="utf-8")
        child_limits = {
            "cpu_seconds": limits.cpu_seconds,
            "memory_mb": limits.memory_mb,
            "file_mb": limits.file_mb,
            "processes": limits.processes,
            "hooks": limits.hooks,
            "hide": _hidden(),
        }
        Path(workdir, "limits.json").write_text(json.dumps(child_limits), encoding="utf-8")
        shutil.copyfile(CHILD, Path(workdir, "_child.py"))
        if mode == "namespaces":
            argv = [*UNSHARE, _python(), "-I", "-S", "_child.py", "mount", workdir, "limits.json"]
        else:
            argv = [_python(), "-I", "-S", "_child.py", "run", workdir, "limits.json"]
        lines, code, timed_out = _spawn(argv, workdir, limits.timeout)
        # out of CPU time (the child's exit status for RLIMIT_CPU's SIGXCPU, or the signal itself where the program
        # took the handler away): a timeout, as the wall clock's is; which comes first depends on how busy the
        # machine is
        timed_out = timed_out or code in (CPU_TIME_EXIT, -signal.SIGXCPU)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if code != 0 and not timed_out:  # it died (a signal, a limit) or exited early: nothing it said counts
        return Outcome(0, len(tests), "error")
    return _outcome(lines, nonce, len(tests), timed_out)


def _spawn(argv: list[str], workdir: str, timeout: float) -> tuple[list[str], int, bool]:
    """Run the child in its own session; its result lines, exit status, and whether the wall clock ran out (then
    the whole process group is killed)."""
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        # the whole group, while its leader is unreaped (so the group id cannot have been reused)
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0] or b""
    finally:
        if proc.returncode is None:  # an exception in the parent (KeyboardInterrupt): leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    return out[:MAX_OUTPUT].decode("utf-8", "replace").splitlines(), code, timed_out


def _outcome(lines: list[str], nonce: str, total: int, timed_out: bool) -> Outcome:
    ran, passed, program = set(), 0, None
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or parts[0] != nonce:
            continue
        if parts[1] == "program":
            program = parts[2] == "pass"
        elif parts[1].isdigit() and int(parts[1]) < total and int(parts[1]) not in ran:
            ran.add(int(parts[1]))
            passed += parts[2] == "pass"
    if program is not True:
        return Outcome(0, total, "timeout" if timed_out else "error")
    if timed_out or len(ran) < total:
        return Outcome(passed, total, "timeout" if timed_out else "error")
    return Outcome(passed, total, "ok" if passed == total else "failed")


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def run_many(jobs: list[dict], limits: Limits | None = None, workers: int = 0) -> list[Outcome]:
    """`run_code(**job)` for each job, `workers` at a time (0: min(2, CPUs)), in the jobs' order."""
    n = workers or default_workers()
    if n == 1 or len(jobs) <= 1:
        return [run_code(**job, limits=limits) for job in jobs]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda job: run_code(**job, limits=limits), jobs))
