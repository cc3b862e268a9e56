"""The sandbox's child process: not imported by raft_data, run by path as `python -I -S sandbox_child.py ...` (the
standard library only, no site-packages). raft_data/rewards/sandbox.py starts it; read that module's docstring for
what is enforced where.

Run as (by sandbox.py, never by hand):
    python -I -S sandbox_child.py mount <workdir> <limits.json>   # pid 1 of new namespaces: mounts, then `run`
    python -I -S sandbox_child.py run <workdir> <limits.json>     # limits, audit hooks, the program, its tests

`mount` (only inside a new user + mount namespace) makes every mount read-only, hides the listed folders under
empty tmpfs mounts, shows the work folder as /tmp, then replaces itself with `run`, so that the ctypes module it
used is not loaded in the process that runs untrusted code. `run` reads job.json from the work folder, sets the
resource limits, installs the audit hooks, runs the program and then each test, and writes one line per finished
test to the result file descriptor: `<nonce> <index> pass|fail`.
"""

import json
import os
import resource
import signal
import sys

# mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_RELATIME = 32, 1024, 2048, 4096, 16384, 1 << 21
KEPT_FLAGS = {  # per-mount flags a user namespace may not clear on a remount: kept as they are
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}


def mount_stage(workdir: str, limits: dict) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target, fstype, flags, data=None) -> bool:
        enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
        return libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) == 0

    # the work folder, writable, as /tmp (the host's /tmp is out of sight); bound first, as a bind mount copies the
    # read-only flag of the mount it comes from
    if not mount(workdir, "/tmp", None, MS_BIND):
        os._exit(3)
    # folders the program must not read: empty, read-only tmpfs mounts over them
    for path in limits.get("hide", []):
        if os.path.isdir(path) and not mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k"):
            os._exit(3)  # fail closed: the program never runs with the folder in sight
    # every other mount read-only (a remount keeps the flags a user namespace may not clear)
    with open("/proc/self/mountinfo") as f:
        entries = [line.split() for line in f]
    for fields in entries:
        point = fields[4].encode().decode("unicode_escape")
        if point == "/tmp" or point == "/proc" or point.startswith("/proc/"):
            continue  # the work folder, and the namespace's own /proc (--mount-proc)
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
            flags |= KEPT_FLAGS.get(opt, 0)
        mount(None, point, None, flags)
    os.execv(sys.executable, [sys.executable, "-I", "-S", "/tmp/_child.py", "run", "/tmp", "/tmp/limits.json"])


# the exit status that says the CPU-time limit ran out (raft_data/rewards/sandbox.py reads it as a timeout)
CPU_TIME_EXIT = 124


def set_limits(limits: dict) -> None:
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # out of CPU time: say so by the exit status (as the first process of a PID namespace, a signal left to its
    # default action would be ignored, and the hard limit's SIGKILL a second later would say nothing)
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(CPU_TIME_EXIT))
    memory = int(limits["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = int(limits["file_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NPROC, (int(limits["processes"]), int(limits["processes"])))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
REFUSED = {  # audit events refused outright: new processes (they would run without these hooks), raw memory access
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "subprocess.Popen",
    "os.killpg",
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
    "socket.getaddrinfo",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.cdata",
    "sys.addaudithook",
    "os.chdir",
    "os.putenv",
    "os.unsetenv",
    "shutil.rmtree",
    "os.symlink",
    "os.link",
    "os.chmod",
    "os.chown",
}
WRITES = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.utime"}


def install_hooks(workdir: str) -> None:
    root = os.path.realpath(workdir) + os.sep
    me = os.getpid()

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an open file descriptor: its path was checked when it was opened
        try:
            full = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return (full + os.sep).startswith(root)

    def other_process(path) -> bool:  # /proc/<pid>/... of another process: its environment, memory, files
        try:
            parts = os.path.realpath(os.fsdecode(path)).split(os.sep)
        except Exception:
            return True
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != me

    def hook(event: str, args: tuple) -> None:
        if event in REFUSED:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "os.kill" and args[0] != me:
            raise PermissionError("sandbox: os.kill of another process is not allowed")
        if event == "open":
            path, mode, flags = args
            if not isinstance(path, int) and other_process(path):
                raise PermissionError("sandbox: reading another process's /proc files is not allowed")
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the work folder is not allowed")
        elif event in WRITES and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"sandbox: {event} outside the work folder is not allowed")
        elif event == "import" and args[0] in ("ctypes", "_ctypes", "_posixsubprocess"):
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")

    sys.addaudithook(hook)


def run_stage(workdir: str, limits: dict) -> None:
    os.chdir(workdir)
    with open(os.path.join(workdir, "job.json")) as f:
        job = json.load(f)
    os.remove(os.path.join(workdir, "job.json"))
    os.remove(os.path.join(workdir, "limits.json"))
    # results go to a private copy of stdout; the program's own output goes nowhere
    out = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    nonce = job["nonce"]
    sys.argv = ["program.py"]
    set_limits(limits)
    if limits.get("hooks", True):
        install_hooks(workdir)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    del job["nonce"]

    def report(i: int, ok: bool) -> None:
        out.write(f"{nonce} {i} {'pass' if ok else 'fail'}\n")
        out.flush()

    try:
        exec(compile(job["program"], "program.py", "exec"), namespace)
        if job.get("setup"):
            exec(compile(job["setup"], "setup.py", "exec"), namespace)
        candidate = namespace[job["entry_point"]] if job.get("entry_point") else None
    except BaseException:
        out.write(f"{nonce} program fail\n")
        out.flush()
        os._exit(1)
    out.write(f"{nonce} program pass\n")
    out.flush()
    for i, test in enumerate(job["tests"]):
        scope = dict(namespace)
        if candidate is not None:
            scope["candidate"] = candidate
        try:
            exec(compile(test, f"test_{i}.py", "exec"), scope)
            report(i, True)
        except BaseException:
            report(i, False)
    os._exit(0)


def main() -> None:
    stage, workdir, limits_file = sys.argv[1:4]
    with open(limits_file) as f:
        limits = json.load(f)
    if stage == "mount":
        mount_stage(workdir, limits)
    else:
        run_stage(workdir, limits)


if __name__ == "__main__":
    main()
