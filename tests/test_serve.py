"""Warm launches (`sandbox serve`) against cold ones, as real processes.

Every scenario runs twice, cold (SANDBOX_SERVER=off) and warm (through a server this test
starts), with each client: the Python one (`python -m sandbox`) and the compiled one
(.venv/bin/sandbox, built by ci/setup). What must be equal: exit status, stdout, stderr
(pids aside), the audit records' kinds and fields, and what the agent sees of its process
(cwd, umask, environment, limits, ignored signals, descriptors, terminal). The server's
log shows that the warm runs were served warm, so a test cannot pass by falling back.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import pty
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from progs.serve_raw import raw_request

from sandbox.serve import protocol as P
from sandbox.testing import write_policy

GUARD = 60.0  # seconds: a guard against a hung process, never a timing assertion
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
COMPILED = Path(PY).parent / "sandbox"
TESTUSER = "sandboxtest"


def _is_elf(path: Path) -> bool:
    try:
        return path.read_bytes()[:4] == b"\x7fELF"
    except OSError:
        return False


CLIENTS: dict[str, list[str]] = {"python": [PY, "-m", "sandbox"]}
if _is_elf(COMPILED):
    CLIENTS["compiled"] = [str(COMPILED)]


def needs_compiled() -> None:
    if "compiled" not in CLIENTS:
        pytest.fail("the compiled client is not built: run ci/setup (it needs gcc)")


# --------------------------------------------------------------------------- the server


class Server:
    """A `sandbox serve -v` of this test, with its log."""

    def __init__(
        self,
        directory: Path,
        *,
        env: Mapping[str, str] | None = None,
        umask: int | None = None,
        mode: int = 0o700,
    ) -> None:
        directory.mkdir(mode=mode, exist_ok=True)
        directory.chmod(mode)
        self.path = str(directory / "serve.sock")
        self.log_path = directory / "serve.log"
        run_env = dict(os.environ if env is None else env)
        run_env.setdefault("PYTHONPATH", str(REPO))

        def pre() -> None:
            if umask is not None:
                os.umask(umask)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "sandbox", "serve", "--socket", self.path, "--verbose"],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=run_env,
                cwd="/",
                preexec_fn=pre,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line == f"listening {self.path}\n", (line, self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def launches(self) -> int:
        return len(re.findall(r"^sandbox serve: launch \d+ for pid \d+$", self.log(), re.M))

    def refusals(self) -> list[str]:
        return re.findall(r"refused a launch for pid \d+: (.*)$", self.log(), re.M)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(GUARD)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "srv")
    try:
        yield s
    finally:
        s.stop()


# --------------------------------------------------------------------------- running


class Run:
    def __init__(self, status: int, stdout: str, stderr: str, log: Path) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr
        self.records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    def __repr__(self) -> str:
        return f"status={self.status}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


_n = iter(range(1 << 30))


def argv_of(client: str, log: Path, *args: str) -> list[str]:
    """`sandbox run --audit-log LOG ARGS` with `client`."""
    return [*CLIENTS[client], "run", "--audit-log", str(log), *args]


def run(
    client: str,
    args: Sequence[str],
    *,
    server: Server | None,
    cwd: Path,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Run:
    """`sandbox run ARGS` with `client`, warm through `server` or cold (server None)."""
    log = cwd / f"audit-{next(_n)}.jsonl"
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PYTHONPATH", str(REPO))
    run_env["SANDBOX_SERVER"] = server.path if server is not None else "off"
    before = server.launches() if server is not None else 0
    p = subprocess.run(
        argv_of(client, log, *args),
        input=stdin,
        capture_output=True,
        text=True,
        env=run_env,
        cwd=cwd,
        timeout=GUARD,
        preexec_fn=preexec,
    )
    if server is not None:
        assert server.launches() == before + 1, f"not launched warm\n{server.log()}\n{p}"
    return Run(p.returncode, p.stdout, p.stderr, log)


_PIDS = re.compile(r"\[\d+\]|\bpid \d+")
_ADDR = re.compile(r"0x[0-9a-f]{6,}")


def normal(text: str) -> str:
    """Text with pids and addresses (which differ from run to run) replaced."""
    return _ADDR.sub("0xADDR", _PIDS.sub("[PID]", text))


def shape(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without what differs between any two runs: seq, time, prev, pids, domains."""
    out = []
    for r in records:
        # Landlock's domain ids (in `denied` records) are new in every run too.
        kept = {k: v for k, v in r.items() if k not in ("seq", "time", "prev", "pid", "domain")}
        out.append(json.loads(normal(json.dumps(kept, sort_keys=True))))
    return out


def same(cold: Run, warm: Run) -> None:
    assert warm.status == cold.status, (cold, warm)
    assert warm.stdout == cold.stdout, (cold, warm)
    assert normal(warm.stderr) == normal(cold.stderr), (cold, warm)
    assert shape(warm.records) == shape(cold.records), (cold.records, warm.records)


BASE = ["-p", "stdio rpath proc exec", "-v", "@system:rx"]

# id -> (arguments after `run --audit-log LOG`, stdin, the expected status)
SCENARIOS: dict[str, tuple[list[str], str | None, int]] = {
    "exit-0": ([*BASE, "--", "/bin/echo", "hello"], None, 0),
    "stdin-to-stdout": ([*BASE, "--", "/bin/cat"], "line one\nline two\n", 0),
    "exit-N-and-stderr": (
        [*BASE, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7"],
        None,
        7,
    ),
    "killed-by-signal": ([*BASE, "--", "/bin/sh", "-c", "kill -TERM $$"], None, 128 + 15),
    "violation": ([*BASE, "-v", "{tmp}:rwc", "--", "/usr/bin/touch", "{tmp}/new"], None, 159),
    "violation-errno": (
        ["{policy_errno}", "--", "/bin/sh", "-c", "echo hi > {tmp}/new || echo refused"],
        None,
        0,
    ),
    "usage": (["--bogus", "--", "/bin/true"], None, 2),
    "unknown-promise": (["-p", "stdio rpth", "--", "/bin/true"], None, 2),
    "bad-policy": (["{policy_bad}", "--", "/bin/true"], None, 2),
    "missing-path": (["-p", "stdio", "-v", "/nonexistent-serve:r", "--", "/bin/true"], None, 2),
    "not-executable": (["-p", "stdio rpath", "-v", "@system:r", "--", "/bin/true"], None, 3),
    "not-found": ([*BASE, "--", "no-such-command-serve"], None, 3),
}


def fill(args: Sequence[str], tmp: Path) -> list[str]:
    pol_errno = {
        "version": 1,
        "name": "errno",
        "pledge": "stdio rpath proc exec",
        "unveil": {"@system": "rx", str(tmp): "rwc"},
        "violation": "errno",
    }
    values = {
        "tmp": str(tmp),
        "policy_errno": write_policy(tmp, pol_errno, "errno"),
        "policy_bad": str(_bad_policy(tmp)),
    }
    return [a.format(**values) for a in args]


def _bad_policy(tmp: Path) -> Path:
    p = tmp / "bad.yaml"
    p.write_text("version: 1\npledge: stdio nonsense\nbogus: 1\n")
    return p


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_warm_equals_cold(tmp_path: Path, server: Server, client: str, scenario: str) -> None:
    args, stdin, status = SCENARIOS[scenario]
    work = tmp_path / "w"
    work.mkdir()
    cold = run(client, fill(args, work), server=None, cwd=work, stdin=stdin)
    (work / "new").unlink(missing_ok=True)
    warm = run(client, fill(args, work), server=server, cwd=work, stdin=stdin)
    assert cold.status == status, cold
    same(cold, warm)
    if scenario.startswith("violation"):
        for r in (cold, warm):
            v = [rec for rec in r.records if rec["kind"] == "violation"]
            assert v and v[0]["syscall"] == "openat" and v[0]["promise"] == "wpath cpath", r
        assert "pledge violation: openat(" in warm.stderr or "refused" in warm.stdout, warm
    if scenario in ("exit-0", "stdin-to-stdout", "exit-N-and-stderr", "killed-by-signal"):
        assert [rec["kind"] for rec in warm.records] == ["start", "lock", "exit"], warm.records


def test_compiled_client_is_built() -> None:
    """ci/setup builds it; without it the warm path would pay a Python start each time."""
    needs_compiled()
    script = (Path(PY).parent / "sandbox-py").read_text()
    assert script.startswith("#!") and "sandbox.cli.main" in script


# --------------------------------------------------------------------------- process state

STATE = (
    "pwd; umask; ulimit -n; echo FOO=$FOO; echo SERVER_ONLY=${SERVER_ONLY-unset}; "
    "grep -E '^(SigIgn|SigBlk|NoNewPrivs)' /proc/self/status; ls /proc/self/fd | sort -n | "
    "tr '\\n' ' '; echo; cat /proc/self/oom_score_adj"
)


def _state_policy(tmp: Path) -> str:
    return write_policy(
        tmp,
        {
            "version": 1,
            "name": "state",
            "pledge": "stdio rpath proc exec",
            "unveil": {"@system": "rx", "/proc": "r", str(tmp): "r"},
            "env": {"keep": ["PATH", "FOO", "SERVER_ONLY"]},
        },
        "state",
    )


def _client_state() -> None:
    """What the client's caller set: the launch must take it on (a cold launcher would)."""
    os.umask(0o027)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("17")


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_cwd_umask_env_limits_and_signals_are_the_clients(tmp_path: Path, client: str) -> None:
    # The server runs with its own umask, cwd and environment: none of it may show.
    srv = Server(
        tmp_path / "srv",
        env=dict(os.environ, SERVER_ONLY="leaked", PYTHONPATH=str(REPO)),
        umask=0o077,
    )
    try:
        work = tmp_path / "work"
        work.mkdir()
        pol = _state_policy(work)
        args = [pol, "--", "/bin/sh", "-c", STATE]
        env = dict(os.environ, FOO="from-the-client")
        env.pop("SERVER_ONLY", None)
        cold = run(client, args, server=None, cwd=work, env=env, preexec=_client_state)
        warm = run(client, args, server=srv, cwd=work, env=env, preexec=_client_state)
    finally:
        srv.stop()
    same(cold, warm)
    lines = warm.stdout.splitlines()
    assert lines[:5] == [str(work), "0027", "200", "FOO=from-the-client", "SERVER_ONLY=unset"], warm
    status = dict(line.split(":\t") for line in lines[5:8])
    assert int(status["SigIgn"], 16) >> (signal.SIGUSR2 - 1) & 1, "the client's ignored USR2"
    assert int(status["SigBlk"], 16) == 0 and status["NoNewPrivs"] == "1", status
    # stdio, the broker channel, and the descriptor ls itself reads /proc/self/fd with
    assert lines[8].split() == ["0", "1", "2", "3", "4"], "nothing else"
    assert lines[9] == "17"


def test_server_state_does_not_reach_the_launch(tmp_path: Path, server: Server) -> None:
    """While a warm launch runs, its launcher holds none of the server's descriptors (the
    listening socket, other connections) and runs one thread, in a session of its own."""
    work = tmp_path / "w"
    work.mkdir()
    env = dict(os.environ, SANDBOX_SERVER=server.path, PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        argv_of("python", work / "a.jsonl", *BASE, "--", "/bin/sh", "-c", "echo ready; read x"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == "ready\n"
        launches = _launches(server)
        assert len(launches) == 1, launches
        launch = launches[0]
        server_sockets = _socket_inodes(server.proc.pid)
        assert server_sockets, "the server holds its listening socket"
        assert not server_sockets & _socket_inodes(launch), "a server socket leaked"
        status = Path(f"/proc/{launch}/status").read_text()
        assert re.search(r"^Threads:\s+1$", status, re.M), status
        stat = Path(f"/proc/{launch}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[2]) == int(stat[3]) == launch, "its own process group and session"
        assert os.readlink(f"/proc/{launch}/cwd") == str(work)
        p.stdin.write("done\n")
        p.stdin.close()
        assert p.wait(GUARD) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _launches(server: Server) -> list[int]:
    """The server's children that are launches: not its spare (forked ahead, still in the
    server's cwd, "/", with nothing of a client's yet)."""
    out = []
    for pid in _children(server.proc.pid):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/cwd") != "/":
                out.append(pid)
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:"):
                out.add(target)
    return out


# --------------------------------------------------------------------------- signals


def _started(
    client: str,
    server: Server | None,
    work: Path,
    script: str,
    promises: str = "stdio rpath proc exec",
) -> tuple[subprocess.Popen[str], Path]:
    log = work / f"audit-{next(_n)}.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["SANDBOX_SERVER"] = server.path if server is not None else "off"
    p = subprocess.Popen(
        argv_of(client, log, "-p", promises, "-v", "@system:rx", "--", "/bin/sh", "-c", script),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    return p, log


SLEEPER = "echo ready; read x"  # until a signal ends it (its stdin stays open)


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_signal_to_the_client_is_the_launchers(
    tmp_path: Path, server: Server, client: str, sig: int
) -> None:
    """A signal sent to `sandbox run` (kill PID) does what it does to a cold launcher:
    TERM and HUP end the agent, USR1 ends the launcher itself (Python's default) and the
    client ends by it too."""
    outcomes = []
    for srv in (None, server):
        work = tmp_path / ("warm" if srv else "cold")
        work.mkdir()
        p, log = _started(client, srv, work, SLEEPER)
        p.send_signal(sig)
        p.wait(GUARD)  # stdin stays open: the agent ends by the signal, not by EOF
        assert p.stdout is not None and p.stderr is not None and p.stdin is not None
        outcomes.append(Run(p.returncode, p.stdout.read(), p.stderr.read(), log))
        p.stdin.close()
    cold, warm = outcomes
    if sig == signal.SIGUSR1:
        assert cold.status == -signal.SIGUSR1, cold
    else:
        exits = [r for r in cold.records if r["kind"] == "exit"]
        assert exits, cold.records  # the launcher lived to record the agent's end
    same(cold, warm)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_killed_client_kills_the_launch(tmp_path: Path, server: Server, client: str) -> None:
    """SIGKILL of the client leaves nothing running, as SIGKILL of a cold launcher."""
    work = tmp_path / "w"
    work.mkdir()
    p, _log = _started(client, server, work, "echo ready; exec sleep 60")
    launch = _launches(server)
    assert len(launch) == 1
    p.kill()
    p.wait(GUARD)
    deadline = time.monotonic() + GUARD  # a guard: the kill is immediate
    while launch[0] in _children(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert launch[0] not in _children(server.proc.pid), "the launch outlived its client"
    assert _launches(server) == []


# --------------------------------------------------------------------------- the terminal


def _on_pty(argv: list[str], env: Mapping[str, str], cwd: Path, keys: bytes) -> tuple[int, str]:
    """Run argv as the foreground job of a new terminal; after it prints "ready", type
    `keys`. Its wait status and everything it printed."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs
        os.chdir(cwd)
        os.execve(argv[0], argv, dict(env))
    out = b""
    typed = False
    deadline = time.monotonic() + GUARD
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last user closed it
                break
            if not chunk:
                break
            out += chunk
            if not typed and b"ready" in out:
                os.write(master, keys)
                typed = True
    finally:
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return status, out.decode(errors="replace")


TTY_SCRIPT = (
    "test -t 0 && test -t 1 && echo is-a-tty; stty size; "
    "trap 'echo got-int; exit 5' INT; echo ready; read x; echo not-interrupted"
)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_terminal_and_its_interrupt(tmp_path: Path, server: Server, client: str) -> None:
    """The agent gets the terminal (isatty, its size) and ^C reaches it once, warm as cold
    (warm: the client passes it to the launch's group; the launcher forwards nothing more,
    as cold, since the client told it the terminal reaches the agent)."""
    results = []
    for srv in (None, server):
        work = tmp_path / ("warm" if srv else "cold")
        work.mkdir()
        env = dict(os.environ, PYTHONPATH=str(REPO), SANDBOX_SERVER=srv.path if srv else "off")
        argv = argv_of(client, work / "a.jsonl", "-p", "stdio rpath proc exec", "-v",
                       "@system:rx", "-v", "/etc/locale.alias:r", "--", "/bin/sh", "-c",
                       TTY_SCRIPT)  # fmt: skip
        before = srv.launches() if srv else 0
        status, out = _on_pty(argv, env, work, b"\x03")
        if srv:
            assert srv.launches() == before + 1, srv.log()
        results.append((os.waitstatus_to_exitcode(status), out.replace("^C", "")))
    (cold_status, cold_out), (warm_status, warm_out) = results
    assert cold_status == 5 and "is-a-tty" in cold_out and cold_out.count("got-int") == 1, cold_out
    assert (warm_status, normal(warm_out)) == (cold_status, normal(cold_out))


DEV_TTY = 'import os; fd = os.open("/dev/tty", os.O_WRONLY); os.write(fd, b"via-dev-tty\\n")'


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_promise_tty_with_a_controlling_terminal_launches_cold(
    tmp_path: Path, server: Server, client: str
) -> None:
    """What `tty` gives (/dev/tty, the foreground group) needs the controlling terminal,
    which only a cold launch has: such a run is refused warm and goes cold, and /dev/tty
    opens as it does cold. Without a controlling terminal the same run is served warm."""
    env = dict(os.environ, PYTHONPATH=str(REPO), SANDBOX_SERVER=server.path)
    argv = argv_of(client, tmp_path / "a.jsonl", "-p", "stdio rpath wpath tty", "-v",
                   "@python:rx", "-v", "@system:rx", "--", PY, "-c", DEV_TTY)  # fmt: skip
    status, out = _on_pty(argv, env, tmp_path, b"")
    assert os.waitstatus_to_exitcode(status) == 0 and "via-dev-tty" in out, out
    assert server.launches() == 0
    assert any("promises tty" in r for r in server.refusals()), server.log()
    # No controlling terminal: nothing of it to miss; served warm (and /dev/tty fails as
    # it fails cold: ENXIO).
    p = subprocess.run([*argv[:-1], "import os\ntry: os.open('/dev/tty', os.O_WRONLY)\n"
                        "except OSError as e: print(e.errno)"],
                       capture_output=True, text=True, env=env, timeout=GUARD,
                       start_new_session=True)  # fmt: skip
    assert (p.returncode, p.stdout.strip()) == (0, "6"), p
    assert server.launches() == 1, server.log()


BACKGROUND = """
import os, sys
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.execv(sys.argv[1], sys.argv[1:])
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_background_job_on_a_terminal_launches_cold(
    tmp_path: Path, server: Server, client: str
) -> None:
    """A client that is not the terminal's foreground job launches cold: only a cold
    launcher's agent is stopped by job control when it reads the terminal."""
    work = tmp_path / "w"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), SANDBOX_SERVER=server.path)
    inner = argv_of(client, work / "a.jsonl", *BASE, "--", "/bin/echo", "ready")
    # A process group of its own that is not the terminal's foreground group (the
    # terminal's session leader cannot change its own group: its child does).
    bg = [PY, "-c", BACKGROUND, *inner]
    status, out = _on_pty(bg, env, work, b"")
    assert os.waitstatus_to_exitcode(status) == 0 and "ready" in out, out
    assert server.launches() == 0, server.log()


# --------------------------------------------------------------------------- refusals


def test_client_of_another_uid_is_refused(tmp_path: Path) -> None:
    """SO_PEERCRED: the server launches for its own uid only. The same request from root
    is accepted (and writes its marker); from sandboxtest it is refused and nothing runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    import tempfile

    # A directory the other user can reach (pytest's are 0700): only SO_PEERCRED stops it.
    base = Path(tempfile.mkdtemp(prefix="sandbox-serve-uid-"))
    base.chmod(0o755)
    srv = Server(base / "srv", mode=0o755)
    try:
        os.chmod(srv.path, 0o777)
        marker = base / "ran"
        argv = [
            "sandbox",
            "run",
            "--audit-log",
            str(base / "a.jsonl"),
            "-p",
            "stdio rpath wpath cpath proc exec",
            "-v",
            "@system:rx",
            "-v",
            f"{base}:rwc",
            "--",
            "/bin/sh",
            "-c",
            f"echo x > {marker}",
        ]
        tag, value, _ = raw_request(srv.path, argv)
        assert (tag, value) == (P.EXITED, 0) and marker.exists(), srv.log()
        marker.unlink()
        code = (
            "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']\n"
            "from progs.serve_raw import raw_request\n"
            "tag, value, text = raw_request(sys.argv[2], sys.argv[3:])\n"
            "print(tag.decode(), text.decode())"
        )
        as_user = ["runuser", "-u", TESTUSER, "--", "/usr/bin/python3", "-c"]
        p = subprocess.run(
            [*as_user, code, str(REPO), srv.path, *argv],
            capture_output=True,
            text=True,
            timeout=GUARD,
            cwd="/",
        )
        assert p.returncode == 0, p
        assert p.stdout.startswith("RFSE") and "uid 1001" in p.stdout, p
        assert not marker.exists()
        assert any("uid 1001" in r for r in srv.refusals()), srv.log()
        # And the client's side: it never hands its stdio to another user's server.
        code = (
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "from sandbox.serve.client import _connect\n"
            "print(_connect(sys.argv[2]))"
        )
        p = subprocess.run(
            [*as_user, code, str(REPO), srv.path],
            capture_output=True,
            text=True,
            timeout=GUARD,
            cwd="/",
        )
        assert p.stdout.strip() == "None", p
    finally:
        srv.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_no_server_launches_cold(tmp_path: Path, client: str) -> None:
    """No socket, a stale socket nobody listens on, or SANDBOX_SERVER=off: cold, same result."""
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    for where in (str(tmp_path / "none.sock"), str(stale), "off", ""):
        env = dict(os.environ, SANDBOX_SERVER=where, PYTHONPATH=str(REPO))
        p = subprocess.run(
            argv_of(client, tmp_path / "a.jsonl", *BASE, "--", "/bin/echo", "cold"),
            capture_output=True,
            text=True,
            env=env,
            timeout=GUARD,
        )
        assert (p.returncode, p.stdout) == (0, "cold\n"), (where, p)


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize(
    "wrapper,reason",
    [
        (["setpriv", "--no-new-privs"], "no_new_privs"),
        (["unshare", "--net"], "another net namespace"),
    ],
    ids=["no_new_privs", "netns"],
)
def test_confined_or_elsewhere_client_launches_cold(
    tmp_path: Path, server: Server, client: str, wrapper: list[str], reason: str
) -> None:
    """A client the server cannot reproduce (confined, or in other namespaces) is refused,
    and its run goes cold: it still works, under the client's own confinement."""
    if wrapper[0] == "unshare" and os.geteuid() != 0:
        pytest.skip("unshare --net needs root")
    env = dict(os.environ, SANDBOX_SERVER=server.path, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [*wrapper, *argv_of(client, tmp_path / "a.jsonl", *BASE, "--", "/bin/echo", "ran")],
        capture_output=True,
        text=True,
        env=env,
        timeout=GUARD,
    )
    assert (p.returncode, p.stdout) == (0, "ran\n"), p
    assert server.launches() == 0
    assert any(reason in r for r in server.refusals()), server.log()


ESCAPE = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from progs.serve_raw import raw_request
tag, value, text = raw_request(sys.argv[2], sys.argv[4:], cwd=sys.argv[3])
print("REPLY", tag.decode(), text.decode(errors="replace"), flush=True)
"""


def test_agent_cannot_leave_its_sandbox_through_the_server(tmp_path: Path, server: Server) -> None:
    """An agent whose unveil lets it reach the socket asks the server for an unconfined
    launch: refused (it runs under seccomp and no_new_privs). The same request from outside
    is served."""
    out = tmp_path / "out"
    out.mkdir()
    escaped = out / "escaped"
    inner = [
        "sandbox",
        "run",
        "--audit-log",
        str(tmp_path / "inner.jsonl"),
        "-p",
        "stdio rpath wpath cpath proc exec",
        "-v",
        "@system:rx",
        "-v",
        f"{out}:rwc",
        "--",
        "/bin/sh",
        "-c",
        f"echo x > {escaped}",
    ]
    pol = write_policy(
        tmp_path,
        {
            "version": 1,
            "name": "escapee",
            "pledge": "stdio rpath unix sendfd",
            "unveil": {
                "@python": "rx",
                "@system": "rx",
                str(REPO): "r",
                str(tmp_path): "r",
                # The socket reachable ('unix' connects to sockets unveiled 'w'): what is
                # shown is the server's refusal, not the sandbox's.
                str(Path(server.path).parent): "rw",
            },
        },
        "escapee",
    )
    env = dict(os.environ, SANDBOX_SERVER="off", PYTHONPATH=str(REPO))
    p = subprocess.run(
        [
            PY,
            "-m",
            "sandbox",
            "run",
            pol,
            "--audit-log",
            str(tmp_path / "a.jsonl"),
            "--",
            PY,
            "-B",  # no bytecode written beside the helper: the agent may not create files
            "-c",
            ESCAPE,
            str(REPO),
            server.path,
            str(tmp_path),
            *inner,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=GUARD,
        cwd=tmp_path,
    )
    assert "REPLY RFSE" in p.stdout, p
    # Refused at the first difference the server sees: as root its dropped capabilities,
    # else its no_new_privs (and its seccomp filter behind them).
    assert any(why in p.stdout for why in ("CapPrm", "no_new_privs", "seccomp")), p
    assert not escaped.exists()
    tag, value, _ = raw_request(server.path, inner, cwd=str(tmp_path))
    assert (tag, value) == (P.EXITED, 0) and escaped.exists(), "served from outside"


def test_other_installation_or_pythonpath_is_refused(tmp_path: Path, server: Server) -> None:
    """The server runs its own code: a client of another installation, or an environment
    whose PYTHONPATH names another `sandbox` package, would run other code cold."""
    (tmp_path / "sandbox").mkdir()
    argv = ["sandbox", "run", *BASE, "--", "/bin/true"]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    tag, _, text = raw_request(server.path, argv, environ=env)
    assert tag == P.REFUSED and b"another sandbox package" in text, text
    tag, _, text = raw_request(server.path, argv, identity="/elsewhere/sandbox:/other/venv")
    assert tag == P.REFUSED and b"another installation" in text, text
    assert server.launches() == 0
    tag, value, _ = raw_request(server.path, argv)
    assert (tag, value) == (P.EXITED, 0), "the same request with this installation is served"


# --------------------------------------------------------------------------- bad input


def test_garbage_on_the_socket_changes_nothing(tmp_path: Path, server: Server) -> None:
    """Random bytes, a huge announced length, a request cut short, too many descriptors,
    a flood of connections: each is refused or dropped, and the server serves on."""
    import random

    rng = random.Random(11)
    for i in range(60):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(GUARD)
        sock.connect(server.path)
        kind = i % 5
        with contextlib.suppress(OSError):
            if kind == 0:
                sock.sendall(rng.randbytes(rng.randrange(1, 3000)))
            elif kind == 1:
                sock.sendall(P.HEADER.pack(P.MAGIC, P.MAX_REQUEST + 1))
            elif kind == 2:
                sock.sendall(P.HEADER.pack(P.MAGIC, 1000) + b"x" * 10)
            elif kind == 3:
                fds = array.array("i", [0] * 8)
                sock.sendmsg([b"OSW1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            else:
                body = b"\0".join(rng.randbytes(rng.randrange(0, 30)) for _ in range(8))
                sock.sendall(P.HEADER.pack(P.MAGIC, len(body)) + body)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(4096)
        sock.close()
    assert server.proc.poll() is None, server.log()
    work = tmp_path / "w"
    work.mkdir()
    # Two hundred connections that say nothing do not hold up a real one.
    idle = []
    for _ in range(200):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server.path)
        idle.append(sock)
    try:
        r = run("python", [*BASE, "--", "/bin/echo", "still"], server=server, cwd=work)
    finally:
        for sock in idle:
            sock.close()
    assert (r.status, r.stdout) == (0, "still\n")


def test_request_parser_fuzz() -> None:
    """Seeded, bounded: every payload is a Request or a RequestError, nothing else."""
    import random

    rng = random.Random(7)
    good = P.encode_request("id", [b"sandbox", b"run", b"--", b"/bin/true"], [b"A=1"], 7)[
        P.HEADER.size :
    ]
    assert P.decode_payload(good).argv[1] == b"run"
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.choice([b"\0", b"99999999", b"=", rng.randbytes(3)])
            else:
                del data[pos : pos + rng.randrange(1, 8)]
        try:
            req = P.decode_payload(bytes(data))
        except P.RequestError:
            continue
        assert req.argv[1] == b"run" and all(b"=" in e for e in req.environ)


def test_compiled_client_speaks_the_same_protocol() -> None:
    """client.c repeats protocol.py's constants: they must agree."""
    src = (REPO / "sandbox/serve/client.c").read_text()
    assert f'#define MAGIC "{P.MAGIC.decode()}"' in src
    assert f"#define MAX_REQUEST ({P.MAX_REQUEST >> 20}u << 20)" in src
    assert f"#define MAX_REASON {P.MAX_REASON}" in src
    assert f"#define FOREGROUND {P.FOREGROUND}" in src
    for tag in (P.ACCEPTED, P.REFUSED, P.EXITED, P.KILLED):
        assert f'"{tag.decode()}"' in src, tag
    assert "'S', 'I', 'G', group ? 'G' : 'P'" in src
    assert P.SIGNAL_GROUP == b"SIGG" and P.SIGNAL_PROCESS == b"SIGP"
    assert (
        "outheis-sandbox/serve.sock" in src
        and P.SOCKET_DIR + "/" + P.SOCKET_NAME == "outheis-sandbox/serve.sock"
    )


def test_stale_code_is_seen(tmp_path: Path) -> None:
    """The server watches its package: once a module changes on disk, it refuses (clients
    launch cold) instead of running old code next to new."""
    from sandbox.serve.server import _Watch

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    w = _Watch(str(pkg))
    try:
        (pkg / "sub" / "notes.txt").write_text("x")
        (pkg / "__pycache__").mkdir()
        w.on_event()
        assert not w.changed
        (pkg / "sub" / "mod.py").write_text("x = 1\n")
        w.on_event()
        assert w.changed
        w.changed = False
        (pkg / "newpkg").mkdir()  # its files would not be watched: that counts as a change
        w.on_event()
        assert w.changed
    finally:
        w.close()
