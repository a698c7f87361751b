"""Process hygiene of `sandbox run`, seen from inside a real agent: environment, inherited
descriptors, no_new_privs, capabilities, seccomp, securebits, signal dispositions, the
parent-death signal and the agent's own cgroup. The launcher runs as root with every
capability; the agent must have none of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from progs.snippets import py, python_policy

from sandbox.testing import SANDBOX, run_sandboxed, write_policy

GUARD = 60.0  # seconds: a guard against a hung run, never a timing assertion
REPO = Path(__file__).resolve().parents[1]
DEFAULT_KEEP = {"PATH", "LANG", "TERM", "HOME", "TZ"}
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def policy(name: str = "hyg", pledge: str = "stdio rpath", **extra: Any) -> dict[str, Any]:
    return python_policy(name, pledge, **extra)


def status_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory an agent running as nobody can enter (tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="sandbox-hygiene-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- environment

# env(1), not Python: Python adds to its own environment at start (LC_CTYPE, PEP 538).
PRINT_ENV = ["/usr/bin/env"]


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def launcher_env(**extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{REPO}/.venv/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "HOME": "/root",
        "TZ": "UTC",
        "PYTHONPATH": str(REPO),
        "SECRET_TOKEN": "hunter2",
        "FOO": "foo-value",
    }
    if "SANDBOX_SERVER" in os.environ:  # pytest --sandbox-serve: launch through the server
        env["SANDBOX_SERVER"] = os.environ["SANDBOX_SERVER"]
    env.update(extra)
    return env


def test_environment_default_keep_list(tmp_path: Path) -> None:
    r = run_sandboxed(
        PRINT_ENV, policy=policy("envdef"), workdir=tmp_path, env=launcher_env(), timeout=GUARD
    )
    assert r.status == 0, r
    env = parse_env(r.stdout)
    assert set(env) == DEFAULT_KEEP | {"SANDBOX_BROKER_FD", "SANDBOX_AGENT"}, env
    assert env["SANDBOX_AGENT"] == "envdef"
    assert env["SANDBOX_BROKER_FD"] == "3"
    # What is kept keeps its value; what is not kept is gone, secret or not.
    assert env["TZ"] == "UTC" and env["TERM"] == "dumb"
    assert "hunter2" not in r.stdout and "SECRET_TOKEN" not in env and "PYTHONPATH" not in env


def test_environment_keep_and_set(tmp_path: Path) -> None:
    r = run_sandboxed(
        PRINT_ENV,
        policy=policy("envset", env={"keep": ["FOO", "ABSENT"], "set": {"BAR": "bar-value"}}),
        workdir=tmp_path,
        env=launcher_env(),
        timeout=GUARD,
    )
    assert r.status == 0, r
    env = parse_env(r.stdout)
    # keep replaces the default list; a kept name missing in the launcher is simply absent.
    assert env == {
        "FOO": "foo-value",
        "BAR": "bar-value",
        "SANDBOX_BROKER_FD": "3",
        "SANDBOX_AGENT": "envset",
    }, env


# --------------------------------------------------------------------------- descriptors

# fcntl(F_GETFD) on every number up to 256: which descriptors does the process have?
LIST_FDS = """
import fcntl, json
fds = []
for fd in range(256):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        fds.append(fd)
    except OSError:
        pass
print(json.dumps(fds))
"""


def test_inherited_descriptors_are_closed(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    extra = []
    for lowest in (50, 100, 200):
        fd = os.open("/dev/null", os.O_RDONLY)
        extra.append(fcntl.fcntl(fd, fcntl.F_DUPFD, lowest))  # free numbers, not pytest's
        os.close(fd)
    try:
        # The other side: without the sandbox the program does see what it inherits.
        plain = subprocess.run(
            py(LIST_FDS), pass_fds=extra, capture_output=True, text=True, check=True
        )
        assert set(extra) <= set(json.loads(plain.stdout)), plain.stdout
        argv = [
            *SANDBOX, "run", "-p", "stdio rpath", "-v", "@python:rx", "-v", "@system:rx",
            "--audit-log", str(log), "--", *py(LIST_FDS),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            argv,
            pass_fds=extra,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=GUARD,
        )
    finally:
        for n in extra:
            os.close(n)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [0, 1, 2, 3], "only stdio and the broker channel remain"


# --------------------------------------------------------------------------- privileges

READ_STATUS = "print(open('/proc/self/status').read())"


def test_no_new_privs_seccomp_and_no_capabilities_for_a_root_agent(tmp_path: Path) -> None:
    with open("/proc/self/status", encoding="ascii") as f:
        ours = status_fields(f.read())
    assert int(ours["CapEff"], 16) != 0, (
        "the launcher must be privileged for this test to mean much"
    )
    assert ours["NoNewPrivs"] == "0"

    r = run_sandboxed(
        py(READ_STATUS + "\nimport os; print('uid:', os.getuid())"),
        policy=policy("privs", unveil={"@python": "rx", "@system": "rx", "/proc": "r"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    st = status_fields(r.stdout)
    assert st["uid"] == "0", "the agent runs as root (no user: in the policy)"
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert {f: int(st[f], 16) for f in CAP_FIELDS} == dict.fromkeys(CAP_FIELDS, 0), st


def test_root_agent_without_capabilities_cannot_bypass_permissions(public_dir: Path) -> None:
    """uid 0 without CAP_DAC_OVERRIDE is an ordinary owner: nobody's 0600 file is closed."""
    private = public_dir / "private.txt"
    private.write_text("theirs")
    os.chown(private, 65534, 65534)
    private.chmod(0o600)
    assert private.read_text() == "theirs"  # the launcher's capabilities do read it
    code = (
        "import errno\ntry:\n    print(open('private.txt').read())\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    r = run_sandboxed(
        py(code),
        policy=policy("dac", unveil={"@python": "rx", "@system": "rx", str(public_dir): "r"}),
        workdir=public_dir,
        timeout=GUARD,
    )
    assert (r.status, r.stdout.strip()) == (0, "EACCES"), r


def test_setuid_root_program_gives_nothing_back(public_dir: Path) -> None:
    """securebits locked and no_new_privs: a setuid-root program run by an agent that runs as
    nobody stays nobody (outside the sandbox the same copy does become euid 0)."""
    suid = public_dir / "id-suid"
    shutil.copy("/usr/bin/id", suid)
    os.chown(suid, 0, 0)
    suid.chmod(0o4755)
    outside = subprocess.run(
        [str(suid), "-u"], user=65534, group=65534, extra_groups=[], capture_output=True, text=True
    )
    assert outside.stdout == "0\n", outside  # id -u: the effective uid
    r = run_sandboxed(
        [str(suid), "-u"],
        policy=policy("suid", user="nobody", unveil={"@system": "rx", str(public_dir): "rx"}),
        workdir=public_dir,
        timeout=GUARD,
    )
    assert (r.status, r.stdout) == (0, "65534\n"), r


# --------------------------------------------------------------------------- signals


def test_signal_dispositions_are_reset_for_the_agent(tmp_path: Path) -> None:
    """The launcher is Python, which ignores SIGPIPE and SIGXFSZ; the agent must start with
    default dispositions (as subprocess's restore_signals gives), or `yes | head` and
    limits.file_size behave differently under the sandbox. Read by grep, not by Python
    (which would set its own)."""
    r = run_sandboxed(
        ["grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"],
        policy=policy("sigs", unveil={"@system": "rx", "/proc": "r"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    st = status_fields(r.stdout)
    assert int(st["SigBlk"], 16) == 0, st
    ignored = [s.name for s in signal.Signals if int(st["SigIgn"], 16) >> (s.value - 1) & 1]
    assert ignored == [], f"signals ignored in the agent: {ignored}"


# --------------------------------------------------------------------------- parent death

# The agent (and with 'proc' a child of it) report their pids, then sleep.
SLEEPER = """
import os, sys, time
pids = [os.getpid()]
if sys.argv[1] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    pids.append(child)
print(*pids, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    """Exists and is not a zombie (a dead agent may wait for a reaper that is not us)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False


@pytest.mark.parametrize("tree", ["agent", "fork"], ids=["agent", "agent-and-child"])
def test_agent_dies_with_the_launcher(tmp_path: Path, tree: str) -> None:
    """kill -9 of the launcher leaves nothing running unsupervised: not the agent (its
    parent-death signal), and not what the agent started either."""
    pol = write_policy(tmp_path, policy("orphan", "stdio rpath proc"), "orphan")
    log = str(tmp_path / "a.jsonl")
    argv = [*SANDBOX, "run", pol, "--audit-log", log, "--", *py(SLEEPER), tree]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    pids: list[int] = []
    try:
        assert launcher.stdout is not None
        ns_pids = [int(p) for p in launcher.stdout.readline().split()]
        assert len(ns_pids) == (2 if tree == "fork" else 1)
        # The agent runs in its own pid namespace (under the launcher's reaper): map the
        # pids it printed to ours through the descendants of the launcher (through the
        # warm launcher's, under pytest --sandbox-serve: the launch is its child).
        by_ns = descendants_by_ns_pid(launcher.pid) or descendants_by_ns_pid(
            int(os.environ.get("SANDBOX_TEST_SERVER_PID", "0"))
        )
        pids = [by_ns[p] for p in ns_pids]
        assert all(alive(p) for p in pids), "the agent runs while its launcher lives"
        launcher.kill()  # SIGKILL: no clean-up code of the launcher runs
        launcher.wait(GUARD)
        deadline = time.monotonic() + 5.0  # a guard, generous; death is near-instant
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        survivors = [p for p in pids if alive(p)]
        assert survivors == [], f"outlived the launcher: {survivors} of {pids}"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for p in pids:  # do not leave them behind for the next tests when this fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + GUARD
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        remove_cgroups_of(launcher.pid)


def descendants_by_ns_pid(root: int) -> dict[int, int]:
    """Innermost-namespace pid -> our pid, for every descendant of `root`."""
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for kid in kids:
            try:
                with open(f"/proc/{kid}/status", encoding="ascii") as f:
                    found[int(status_fields(f.read())["NSpid"].split()[-1])] = kid
            except (OSError, KeyError):
                continue
            todo.append(kid)
    return found


def remove_cgroups_of(launcher_pid: int) -> None:
    """A launcher killed by SIGKILL cannot remove its (empty) cgroups: tidy up after it."""
    for ctrl, path in own_cgroups().items():
        d = Path("/sys/fs/cgroup", ctrl, path.lstrip("/"))
        for leaf in d.glob(f"outheis-sandbox-*-{launcher_pid}-*") if d.is_dir() else ():
            with contextlib.suppress(OSError):
                leaf.rmdir()


# --------------------------------------------------------------------------- cgroup


def own_cgroups() -> dict[str, str]:
    with open("/proc/self/cgroup", encoding="ascii") as f:
        return cgroup_map(f.read())


def cgroup_map(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            out[c] = path
    return out


def test_agent_runs_in_its_own_cgroup(tmp_path: Path) -> None:
    """The hierarchies its limits need (the pid namespace ends stragglers, so no freezer
    and no pids hierarchy are joined without a processes limit)."""
    limits = {"processes": 50, "memory": "256MiB"}
    r = run_sandboxed(
        ["cat", "/proc/self/cgroup"],
        policy=policy("cgself", limits=limits, unveil={"@system": "rx", "/proc": "r"}),
        workdir=tmp_path,
        timeout=GUARD,
    )
    assert r.status == 0, r
    theirs, ours = cgroup_map(r.stdout), own_cgroups()
    assert theirs["freezer"] == ours["freezer"], (theirs, ours)
    for ctrl in ("pids", "memory"):
        leaf = theirs[ctrl].rsplit("/", 1)[1]
        assert leaf.startswith("outheis-sandbox-cgself-"), theirs
        # A child of the launcher's cgroup (the launcher shares ours), not ours itself.
        assert theirs[ctrl] == f"{ours[ctrl].rstrip('/')}/{leaf}", (theirs, ours)
        assert not os.path.exists(f"/sys/fs/cgroup/{ctrl}{theirs[ctrl]}"), "cgroup left behind"
