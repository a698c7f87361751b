"""limits.* on real processes: each limit binds the agent (and its whole tree), a run under
the limit works, and the launcher (this test's child) survives to report the agent's end.

processes and memory are cgroup limits: they must hold for a root agent too (RLIMIT_NPROC
does not bind uid 0), and nothing of the run may remain afterwards (no process, no cgroup).
cpu, files and file_size are rlimits, with soft = hard so the agent cannot raise them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.testing import Result, run_sandboxed

SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody, unlike the venv's base interpreter
CGROUP_V1 = "/sys/fs/cgroup"
GUARD = 60.0  # seconds: only a guard against a hung run, not a timing assertion


def policy(name: str, pledge: str = "stdio rpath", **extra: Any) -> dict[str, Any]:
    # The launcher opens the unveiled paths as the agent's user: nobody cannot reach the
    # venv's base interpreter under /root, so agents run as nobody use /usr only.
    unveil = {"@system": "rx"} if extra.get("user") else {"@python": "rx", "@system": "rx"}
    p: dict[str, Any] = {"version": 1, "name": name, "pledge": pledge, "unveil": unveil}
    p.update(extra)
    return p


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def py(code: str, marker: str = "") -> list[str]:
    """The venv interpreter running `code` (a marker comment lets us find its processes)."""
    return [sys.executable, "-c", textwrap.dedent(code) + f"\n# {marker}\n"]


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A work directory an agent running as nobody can enter (tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="sandbox-limits-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def exit_record(r: Result) -> dict[str, Any]:
    exits = r.of_kind("exit")
    assert len(exits) == 1, f"expected one exit record\n{r}\n{r.records}"
    return exits[0]


def processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def leftover_cgroups(name: str) -> list[str]:
    """cgroup directories of runs named `name`, beside this process's own cgroups."""
    found = []
    with open("/proc/self/cgroup", encoding="ascii") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctrl in ctrls.split(","):
                if not ctrl or ctrl.startswith("name="):
                    continue
                d = os.path.join(CGROUP_V1, ctrl, path.lstrip("/"))
                if os.path.isdir(d):
                    found += [
                        os.path.join(d, e)
                        for e in os.listdir(d)
                        if e.startswith(f"outheis-sandbox-{name}-")
                    ]
    return found


# --------------------------------------------------------------------------- processes

# Forks `want` sleeping children, stops at the first refusal, reports, exits 5.
FORK_N = """
import errno, json, os, sys, time
kids, err = 0, None
for _ in range({want}):
    try:
        pid = os.fork()
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    kids += 1
print(json.dumps({{"uid": os.getuid(), "forked": kids, "error": err}}), flush=True)
sys.exit(5)
"""

# A real bomb: every process forks forever; the first to be refused reports, and the agent
# (the original process) exits 5 once it has been refused too, leaving the rest running.
FORK_BOMB = """
import errno, json, os, sys, time
me = os.getpid()
refused = None
while refused is None or os.getpid() != me:
    try:
        os.fork()
    except OSError as e:
        if os.getpid() != me:
            time.sleep(0.05)
            continue
        refused = errno.errorcode[e.errno]
print(json.dumps({"uid": os.getuid(), "error": refused}), flush=True)
sys.exit(5)
"""

USERS = [pytest.param(None, id="root"), pytest.param("nobody", id="nobody")]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize(
    ("limit", "want", "forked", "error"), [(20, 25, 19, "EAGAIN"), (40, 25, 25, None)]
)
def test_processes_limit_counts_the_whole_tree(
    public_dir: Path, user: str | None, limit: int, want: int, forked: int, error: str | None
) -> None:
    name = unique_name("nproc")
    extra: dict[str, Any] = {"limits": {"processes": limit}}
    if user:
        extra["user"] = user
    r = run_sandboxed(
        [SYSTEM_PYTHON, "-S", "-c", FORK_N.format(want=want) + f"\n# {name}\n"],
        policy=policy(name, "stdio rpath proc", **extra),
        workdir=public_dir,
        timeout=GUARD,
    )
    assert r.status == 5, r
    out = json.loads(r.stdout)
    assert out["uid"] == (65534 if user else 0), out
    # The agent itself is one of the `limit` processes of its cgroup.
    assert (out["forked"], out["error"]) == (forked, error), r
    assert exit_record(r)["status"] == 5
    assert processes_with(name) == [], "children of the agent outlived the run"
    assert leftover_cgroups(name) == [], "the run's cgroup was not removed"


@pytest.mark.parametrize("user", USERS)
def test_fork_bomb_is_contained(public_dir: Path, user: str | None) -> None:
    name = unique_name("bomb")
    extra: dict[str, Any] = {"limits": {"processes": 20}}
    if user:
        extra["user"] = user
    r = run_sandboxed(
        [SYSTEM_PYTHON, "-S", "-c", FORK_BOMB + f"\n# {name}\n"],
        policy=policy(name, "stdio rpath proc", **extra),
        workdir=public_dir,
        timeout=GUARD,
    )
    assert r.status == 5, r
    assert json.loads(r.stdout) == {"uid": 65534 if user else 0, "error": "EAGAIN"}, r
    assert exit_record(r)["status"] == 5
    assert processes_with(name) == [], "bomb processes outlived the run"
    assert leftover_cgroups(name) == [], "the run's cgroup was not removed"


# --------------------------------------------------------------------------- memory

ALLOCATE = """
import sys
size = int(sys.argv[1])
block = b"\\x01" * size  # every page touched
print(len(block), flush=True)
"""


def test_memory_limit_kills_the_agent_and_says_so(tmp_path: Path) -> None:
    r = run_sandboxed(
        [*py(ALLOCATE), str(512 << 20)],
        policy=policy("memhog", limits={"memory": "64MiB"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 128 + signal.SIGKILL, r
    assert r.stdout == "", r
    assert "memory limit" in r.stderr, r
    ex = exit_record(r)
    assert ex.get("signal") == signal.SIGKILL, ex
    assert "memory limit" in ex.get("reason", ""), ex


def test_memory_under_the_limit_works(tmp_path: Path) -> None:
    r = run_sandboxed(
        [*py(ALLOCATE), str(16 << 20)],
        policy=policy("memok", limits={"memory": "64MiB"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert (r.status, r.stdout.strip()) == (0, str(16 << 20)), r
    assert "memory limit" not in r.stderr
    assert exit_record(r)["status"] == 0


# --------------------------------------------------------------------------- wall clock


def test_wall_limit_ends_a_sleeping_agent(tmp_path: Path) -> None:
    r = run_sandboxed(
        ["sleep", "30"],
        policy=policy("sleeper", limits={"wall": "1s"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 128 + signal.SIGKILL, r
    assert "sandbox: sleeper[" in r.stderr and "wall-clock limit of 1s reached" in r.stderr, r
    ex = exit_record(r)
    assert ex.get("signal") == signal.SIGKILL and "wall-clock" in ex.get("reason", ""), ex


def test_wall_limit_lets_a_short_agent_finish(tmp_path: Path) -> None:
    r = run_sandboxed(
        ["sleep", "0.1"],
        policy=policy("napper", limits={"wall": "20s"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert (r.status, r.stderr) == (0, ""), r
    assert exit_record(r).get("status") == 0


# --------------------------------------------------------------------------- cpu

CPU = """
import json, resource, sys
soft_hard = resource.getrlimit(resource.RLIMIT_CPU)
try:
    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    raised = True
except (ValueError, OSError):
    raised = False
print(json.dumps({"rlimit": list(soft_hard), "raised": raised}), flush=True)
n = 0
for _ in range(int(sys.argv[1])):
    n += 1
print("done", flush=True)
"""


def test_cpu_limit_kills_a_busy_loop(tmp_path: Path) -> None:
    r = run_sandboxed(
        [*py(CPU), str(10**12)],
        policy=policy("spinner", "stdio rpath proc", limits={"cpu": "1s"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    first, *rest = r.stdout.splitlines()
    # The limit is in place, and the agent cannot lift it.
    assert json.loads(first) == {"rlimit": [1, 1], "raised": False}, r
    assert rest == [], r
    assert r.status in (128 + signal.SIGXCPU, 128 + signal.SIGKILL), r
    assert exit_record(r).get("signal") in (signal.SIGXCPU, signal.SIGKILL)


def test_cpu_limit_lets_short_work_finish(tmp_path: Path) -> None:
    r = run_sandboxed(
        [*py(CPU), "1000"],
        policy=policy("worker", "stdio rpath proc", limits={"cpu": "20s"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    assert r.stdout.splitlines()[1:] == ["done"], r


# --------------------------------------------------------------------------- files

OPEN_MANY = """
import errno, json, sys
files, err = [], None
try:
    for _ in range(int(sys.argv[1])):
        files.append(open("/dev/null"))
except OSError as e:
    err = errno.errorcode[e.errno]
print(json.dumps({"opened": len(files), "highest": max(f.fileno() for f in files), "error": err}))
"""


@pytest.mark.parametrize(("limit", "opened", "error"), [(16, None, "EMFILE"), (64, 32, None)])
def test_files_limit(tmp_path: Path, limit: int, opened: int | None, error: str | None) -> None:
    r = run_sandboxed(
        [*py(OPEN_MANY), "32"],
        policy=policy(
            "opener",
            limits={"files": limit},
            unveil={"@python": "rx", "@system": "rx", "@devices": "r"},
        ),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    out = json.loads(r.stdout)
    assert out["error"] == error, r
    if opened is not None:
        assert out["opened"] == opened
    else:
        assert out["highest"] == limit - 1, "descriptors up to the limit were usable"


# --------------------------------------------------------------------------- file_size

WRITE = """
import errno, json, os, sys
size = int(sys.argv[1])
try:
    with open("out.bin", "wb") as f:
        f.write(b"x" * size)
    err = None
except OSError as e:
    err = errno.errorcode[e.errno]
print(json.dumps({"error": err, "size": os.path.getsize("out.bin")}))
"""

WRITER_UNVEIL = {"@python": "rx", "@system": "rx", "@devices": "r", ".": "rwc"}


@pytest.mark.parametrize(
    ("size", "error", "on_disk"), [(200_000, "EFBIG", 65536), (60_000, None, 60_000)]
)
def test_file_size_limit_python(tmp_path: Path, size: int, error: str | None, on_disk: int) -> None:
    """Python ignores SIGXFSZ itself (at start-up), so it sees the write fail with EFBIG."""
    r = run_sandboxed(
        [*py(WRITE), str(size)],
        policy=policy(
            "writer", "stdio rpath wpath cpath", limits={"file_size": "64KiB"}, unveil=WRITER_UNVEIL
        ),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    assert json.loads(r.stdout) == {"error": error, "size": on_disk}, r


def test_file_size_limit_kills_a_program_with_default_signals(tmp_path: Path) -> None:
    """A program that leaves SIGXFSZ alone is ended by it (POSIX default), as it would be
    outside the sandbox: the launcher (Python, which ignores SIGXFSZ) must not pass its
    dispositions on."""
    r = run_sandboxed(
        ["dd", "if=/dev/zero", "of=out.bin", "bs=200000", "count=1"],
        policy=policy(
            "dd", "stdio rpath wpath cpath", limits={"file_size": "64KiB"}, unveil=WRITER_UNVEIL
        ),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 128 + signal.SIGXFSZ, r
    assert exit_record(r).get("signal") == signal.SIGXFSZ
    assert (tmp_path / "out.bin").stat().st_size == 65536


def test_file_size_limit_allows_small_writes_by_a_program(tmp_path: Path) -> None:
    r = run_sandboxed(
        ["dd", "if=/dev/zero", "of=out.bin", "bs=60000", "count=1"],
        policy=policy(
            "dd", "stdio rpath wpath cpath", limits={"file_size": "64KiB"}, unveil=WRITER_UNVEIL
        ),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    assert (tmp_path / "out.bin").stat().st_size == 60_000


# --------------------------------------------------------------------------- user

WHOAMI = (
    "import json, os; print(json.dumps([os.getuid(), os.geteuid(), os.getgid(), os.getegid()]))"
)


@pytest.mark.parametrize(("user", "ids"), [(None, [0, 0, 0, 0]), ("nobody", [65534] * 4)])
def test_user_runs_the_agent_as_that_user(
    public_dir: Path, user: str | None, ids: list[int]
) -> None:
    extra = {"user": user} if user else {}
    r = run_sandboxed(
        [SYSTEM_PYTHON, "-S", "-c", WHOAMI],
        policy=policy("whoami", **extra),
        workdir=public_dir,
        timeout=GUARD,
    )
    assert r.status == 0, r
    assert json.loads(r.stdout) == ids, r


def test_unveiled_but_unreadable_for_the_user_is_refused(public_dir: Path) -> None:
    """Unveil adds no rights: a root-only file stays unreadable for an agent run as nobody
    (and readable for a root agent in the same setting, the other side)."""
    secret = public_dir / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    code = (
        "import errno\ntry:\n    print(open('secret.txt').read())\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    unveil = {"@system": "rx", str(public_dir): "r"}
    as_nobody = run_sandboxed(
        [SYSTEM_PYTHON, "-S", "-c", code],
        policy=policy("reader", user="nobody", unveil=unveil),
        workdir=public_dir,
        timeout=GUARD,
    )
    as_owner = run_sandboxed(
        [SYSTEM_PYTHON, "-S", "-c", code],
        policy=policy("reader", unveil=unveil),
        workdir=public_dir,
        timeout=GUARD,
    )
    assert (as_owner.status, as_owner.stdout.strip()) == (0, "s3cret"), as_owner
    assert (as_nobody.status, as_nobody.stdout.strip()) == (0, "EACCES"), as_nobody


@pytest.mark.parametrize(
    ("qos", "nice", "policy"),
    [
        ("background", 19, os.SCHED_IDLE),
        ("utility", 5, os.SCHED_BATCH),
        ("interactive", 0, os.SCHED_OTHER),
    ],
)
def test_qos_sets_nice_and_scheduling_class(
    tmp_path: Path, qos: str, nice: int, policy: int
) -> None:
    """qos lowers the agent's CPU (and I/O) priority; read back from /proc by the agent."""
    code = (
        "f = open('/proc/self/stat').read().rsplit(')', 1)[1].split()\n"
        "print(f[16], f[38], flush=True)\n"  # nice, policy
    )
    pol = {
        "version": 1,
        "name": "qos",
        "pledge": "stdio rpath",
        "qos": qos,
        "unveil": {"@python": "rx", "@system": "rx", "/proc": "r"},
    }
    r = run_sandboxed([sys.executable, "-c", code], policy=pol, workdir=tmp_path)
    assert r.status == 0, r
    assert r.stdout.split() == [str(nice), str(policy)], r
    assert r.of_kind("start")[0]["enforced"]["qos"] == qos
