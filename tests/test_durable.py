"""The durable log: the file lock is not held across fdatasync, nothing is acknowledged
before it is durable, batch mode's bounds and its synchronous kinds, the `audit:` key.

How durability is shown for real: each writer process runs under a seccomp filter that
sends its fdatasync calls to the test (user notification). The test holds a sync as long
as it likes (a slow disk, without timing), looks at the file and the locks meanwhile,
and then performs the sync itself: it notes the file's size, runs fdatasync on its own
descriptor of the same file (a sync flushes the file, whoever wrote it) and only then
answers the writer's call. So the test knows exactly which bytes were durable when, and
a record acknowledged (the writer prints it after commit returns) must lie within them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from progs.syskit import make, systems_fixture  # noqa: F401  # the fixture

from sandbox.enforce import seccomp as sc
from sandbox.errors import PolicyError
from sandbox.parent.audit import AuditLog, read_records, verify
from sandbox.policy.loader import load_policy_text
from sandbox.policy.model import Audit
from sandbox.system.loader import load_system
from sandbox.testing import write_policy

REPO = Path(__file__).resolve().parents[1]
HANG = float(os.environ.get("SANDBOX_TEST_HANG", "60"))  # a hang guard, never a timing assertion

# A writer: fdatasync goes to the test; commands on stdin run in named threads
# ("T1 append op", "T1 commit", "T2 record violation", "main close").
WRITER = r"""
import os, queue, socket, sys, threading
from sandbox.enforce import hygiene, seccomp as sc
ps = sc._lib()
path, sync, window, sock_fd = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
hygiene.set_no_new_privs()
f = ps.SyscallFilter(defaction=ps.ALLOW)
f.add_rule(ps.NOTIFY, "fdatasync")
lfd = sc.install(f, listener=True)  # before any thread: every thread inherits it
socket.send_fds(socket.socket(fileno=sock_fd), [b"L"], [lfd])
os.close(lfd)
from sandbox.parent.audit import AuditError, AuditLog
FIELDS = {
    "op": dict(pid=7, op="open", resource="vault", path="a.txt", decision="allow", reason="x"),
    "violation": dict(pid=7, syscall="ptrace", args=[0], promise=None, action="kill"),
    "lock": dict(pid=7, pledge="stdio", unveil={}),
    "exit": dict(pid=7, status=0),
    "start": dict(pid=7, policy=None, policy_sha256=None, command=["x"], enforced={}),
}
log = AuditLog(path, "w", sync=sync, window=window)
out = threading.Lock()
def say(*words):
    with out:
        print(*words, flush=True)
def run(name, q):
    while (cmd := q.get()) is not None:
        try:
            if cmd[0] == "append":
                say(name, "appended", log.append(cmd[1], **FIELDS[cmd[1]]))
            elif cmd[0] == "commit":
                log.commit()
                say(name, "committed")
            elif cmd[0] == "record":
                for _ in range(int(cmd[2]) if len(cmd) > 2 else 1):
                    say(name, "acked", log.record(cmd[1], **FIELDS[cmd[1]]))
        except AuditError as e:
            say(name, "error", str(e).replace("\n", " "))
queues, threads = {}, []
for line in sys.stdin:
    name, *cmd = line.split()
    if name == "main":
        break
    if name not in queues:
        queues[name] = queue.Queue()
        threads.append(threading.Thread(target=run, args=(name, queues[name])))
        threads[-1].start()
    queues[name].put(cmd)
for q in queues.values():
    q.put(None)
for t in threads:
    t.join()
try:
    log.close()
    say("main", "closed")
except AuditError as e:
    say("main", "error", str(e))
"""


class Gate:
    """The writer's fdatasync calls, held and performed by the test."""

    def __init__(self, listener: int, log: Path) -> None:
        self.fd, self.log = listener, log
        self.durable = 0  # bytes of the log made durable by a sync the test performed
        self.syncs = 0

    def next(self, timeout: float = HANG) -> tuple[sc.Notification, int] | None:
        """The next fdatasync (held: the writer waits in it) and the file's size then; None
        if none comes within `timeout`."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        n = sc.recv_notification(self.fd)
        if n is None:  # the writer has exited (the listener hangs up)
            time.sleep(0.01)  # no busy loop while the caller waits for the exit status
            return None
        assert n.syscall == "fdatasync", n
        return n, self.log.stat().st_size

    def perform(self, held: tuple[sc.Notification, int]) -> None:
        """Sync what was written when the call was made, then let the writer's call return."""
        n, size = held
        fd = os.open(self.log, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.durable = max(self.durable, size)
        self.syncs += 1
        assert sc.respond(self.fd, n.id, val=0)

    def fail(self, held: tuple[sc.Notification, int], err: int) -> None:
        assert sc.respond(self.fd, held[0].id, error=err)


class Writer:
    def __init__(self, log: Path, sync: str = "durable", window: float = 0.002) -> None:
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(log), sync, str(window), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        theirs.close()
        ours.settimeout(HANG)
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        ours.close()
        self.gate = Gate(fds[0], log)
        self.log = log
        self._buf = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def line(self, timeout: float = HANG) -> str | None:
        """The writer's next line of output, or None if none comes within `timeout`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        self.send("main close")
        # close() syncs what is left: perform those syncs until the writer says it closed
        # (a writer stuck on a sync the test still holds, after a failure, is killed).
        deadline = time.monotonic() + HANG
        while self.proc.poll() is None and time.monotonic() < deadline:
            held = self.gate.next(0.05)
            if held is not None:
                self.gate.perform(held)
        if self.proc.poll() is None:
            self.kill()
            pytest.fail("the writer did not close")
        assert self.proc.wait(HANG) == 0
        os.close(self.gate.fd)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.gate.fd)


def end_of(log: Path, seq: int) -> int:
    """The byte offset where record `seq` ends (its newline included)."""
    lines = log.read_bytes().split(b"\n")
    return sum(len(line) + 1 for line in lines[:seq])


def flock_free(log: Path) -> bool:
    """Whether another process could take the log's lock right now."""
    fd = os.open(log, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # drops the lock if we took it
    return True


def acked(line: str | None) -> int:
    assert line is not None and " acked " in line, line
    return int(line.split()[-1])


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


# ---------------------------------------------------------------------------- the lock


def test_the_lock_is_released_before_the_sync(log: Path) -> None:
    a, b = Writer(log), Writer(log)
    try:
        # The control: between append and commit a writer does hold the lock (the chain's
        # order is decided under it), so the probe can tell a held lock from a free one.
        a.send("T append op")
        assert a.line() == "T appended 1"
        assert not flock_free(log)
        a.send("T commit")
        held_a = a.gate.next()  # A wrote its record and is in fdatasync, held by us
        assert held_a is not None
        assert len(log.read_bytes().splitlines()) == 1
        assert flock_free(log)  # ... without the lock
        # So B takes it, continues the chain after A's record and reaches its own sync,
        # while A's sync is still pending. (Were the lock held across the sync, B would
        # wait on it until A's sync returned, and this would time out.)
        b.send("T record op")
        held_b = b.gate.next()
        assert held_b is not None, "B never reached its fdatasync: it waited for A's lock"
        assert verify(log).records == 2
        assert [r["agent"] for r in read_records(log)] == ["w", "w"]
        # Neither commit has returned: both wait for their syncs.
        assert a.line(0.2) is None and b.line(0.2) is None
        b.gate.perform(held_b)
        assert acked(b.line()) == 2
        assert a.line(0.2) is None  # A's sync is still held: A is not acknowledged
        a.gate.perform(held_a)
        assert a.line() == "T committed"
    finally:
        a.close()
        b.close()
    assert verify(log).ok


# ---------------------------------------------------------------------------- write-ahead


def test_a_commit_covered_by_a_sync_in_flight_waits_for_it_instead_of_syncing(log: Path) -> None:
    w = Writer(log)
    try:
        w.send("T1 append op")
        assert w.line() == "T1 appended 1"
        w.send("T2 append op")
        assert w.line() == "T2 appended 2"
        w.send("T1 commit")  # writes both records, then syncs
        held = w.gate.next()
        assert held is not None and held[1] == end_of(log, 2)
        w.send("T2 commit")  # its record was written by T1: T1's sync covers it
        assert w.line(0.3) is None  # nobody is acknowledged while that sync is held
        assert w.gate.next(0.3) is None  # and T2 did not start a sync of its own
        w.gate.perform(held)
        assert sorted([str(w.line()), str(w.line())]) == ["T1 committed", "T2 committed"]
        assert w.gate.syncs == 1
    finally:
        w.close()


def test_nothing_is_acknowledged_before_it_is_durable(log: Path) -> None:
    """Four threads in one process and another process write at once; every sync is
    performed by the test; each acknowledgement is checked against what was durable."""
    writers = [Writer(log), Writer(log)]
    counts = {0: ["T1", "T2", "T3", "T4"], 1: ["T1"]}
    per_thread = 40
    stop = threading.Event()
    rng = random.Random(11)

    def serve(w: Writer) -> None:
        held: list[tuple[sc.Notification, int]] = []
        while not stop.is_set():
            got = w.gate.next(0.02)
            if got is not None:
                held.append(got)
            # Hold some syncs a little while others are made, in a seeded order, so
            # commits find syncs in flight (the timing varies; the check below does not).
            while held and (got is None or rng.random() < 0.5):
                w.gate.perform(held.pop(rng.randrange(len(held))))
                got = None

    servers = [threading.Thread(target=serve, args=(w,)) for w in writers]
    for t in servers:
        t.start()
    try:
        for i, w in enumerate(writers):
            for name in counts[i]:
                w.send(f"{name} record op {per_thread}")
        total = 0
        for i, w in enumerate(writers):
            for _ in range(len(counts[i]) * per_thread):
                seq = acked(w.line())
                # The writer printed this after its commit returned, which was after a
                # sync the test performed: the record must lie in what that made durable.
                durable = max(x.gate.durable for x in writers)
                assert end_of(log, seq) <= durable, (seq, end_of(log, seq), durable)
                total += 1
        assert total == 5 * per_thread
    finally:
        stop.set()
        for t in servers:
            t.join()
        for w in writers:
            w.close()
    result = verify(log)
    assert result.ok and result.records == 5 * per_thread


def test_a_failed_sync_breaks_the_log_and_refuses_the_operation(log: Path) -> None:
    w = Writer(log)
    try:
        w.send("T record op")
        held = w.gate.next()
        assert held is not None
        w.gate.fail(held, errno.EIO)  # what a failing disk reports
        line = w.line()
        assert line is not None and "error" in line and "commit failed: Input/output error" in line
        w.send("T record op")
        line = w.line()
        assert line is not None and "broken" in line  # fail closed: nothing more is accepted
    finally:
        w.send("main close")
        w.proc.wait(HANG)
        os.close(w.gate.fd)


# ---------------------------------------------------------------------------- batch mode


def test_batch_acknowledges_op_records_once_written_and_syncs_them_within_the_window(
    log: Path,
) -> None:
    window = 0.2
    w = Writer(log, "batch", window)
    try:
        sent = time.monotonic()
        w.send("T record op 3")
        # Acknowledged although no sync has been made (the test makes them all).
        seqs = [acked(w.line()) for _ in range(3)]
        assert seqs == [1, 2, 3] and w.gate.durable == 0
        assert verify(log).records == 3  # written: a SIGKILL now would lose nothing
        # The syncer syncs them, unasked, and never before a window has passed since the
        # first write it did not cover (the bound on how often it syncs).
        held = w.gate.next()
        assert held is not None
        assert time.monotonic() - sent >= window
        w.gate.perform(held)
        assert w.gate.durable >= end_of(log, 1)
    finally:
        w.close()
    assert verify(log).ok


@pytest.mark.parametrize("kind", ["violation", "lock", "exit", "start"])
def test_batch_keeps_refusals_locks_exits_and_starts_synchronous(log: Path, kind: str) -> None:
    w = Writer(log, "batch", 0.5)
    try:
        w.send("T record op")
        assert acked(w.line()) == 1  # batched
        w.send(f"T record {kind}")
        held = w.gate.next()  # its own sync, long before the window is over
        assert held is not None and held[1] >= end_of(log, 2)
        assert w.line(0.3) is None  # not acknowledged while its sync is held
        w.gate.perform(held)
        assert acked(w.line()) == 2
        assert w.gate.durable >= end_of(log, 2)  # ... and the op record with it
    finally:
        w.close()


def test_durable_mode_never_acknowledges_before_the_sync(log: Path) -> None:
    # The other side of the batch test above: the same op records, durable mode.
    w = Writer(log, "durable")
    try:
        w.send("T record op")
        held = w.gate.next()
        assert held is not None
        assert w.line(0.3) is None
        w.gate.perform(held)
        assert acked(w.line()) == 1
    finally:
        w.close()


def test_close_syncs_what_batch_mode_left(log: Path) -> None:
    w = Writer(log, "batch", 1.0)
    w.send("T record op 2")
    assert [acked(w.line()), acked(w.line())] == [1, 2]
    w.send("main close")
    held = w.gate.next()  # close() syncs at once, not at the end of the window
    assert held is not None and held[1] == end_of(log, 2)
    w.gate.perform(held)
    assert w.line() == "main closed"
    assert w.proc.wait(HANG) == 0
    os.close(w.gate.fd)


def test_audit_log_arguments_are_checked(log: Path) -> None:
    with pytest.raises(ValueError, match="sync mode 'fast' unknown"):
        AuditLog(log, "a", sync="fast")
    with pytest.raises(ValueError, match="window 0s out of range"):
        AuditLog(log, "a", sync="batch", window=0)
    with AuditLog(log, "a", sync="batch", window=0.01) as a:
        assert a.durability == {"sync": "batch", "window": 0.01}
        assert a.view("b").durability == a.durability
    with AuditLog(log, "a") as a:
        assert a.durability == {"sync": "durable"}


# ---------------------------------------------------------------------------- policy key


def load(tmp_path: Path, text: str) -> Any:
    return load_policy_text("version: 1\n" + text, "p.yaml", str(tmp_path))


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems]


def test_the_audit_key_loads(tmp_path: Path) -> None:
    assert load(tmp_path, "").audit == Audit("durable", 0.002)
    assert load(tmp_path, "audit: {sync: batch, window: 2ms}\n").audit == Audit("batch", 0.002)
    assert load(tmp_path, "audit:\n  sync: batch\n  window: 0.5s\n").audit == Audit("batch", 0.5)
    assert load(tmp_path, "audit: {sync: batch}\n").audit == Audit("batch", 0.002)
    assert load(tmp_path, "audit: {sync: durable}\n").audit == Audit()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "audit: {sync: fast}\n",
            "2:15: audit.sync must be one of durable, batch, not 'fast'",
        ),
        ("audit: {sync: batch, window: 5s}\n", "2:30: audit.window must be at most 1s"),
        ("audit: {sync: batch, window: 0}\n", "2:30: audit.window must be more than 0 seconds"),
        ("audit: {sync: batch, window: soon}\n", "2:30: audit.window: "),
        ("audit: {window: 2ms}\n", "2:17: audit.window applies only with 'sync: batch'"),
        ("audit: {mode: batch}\n", "2:9: unknown key 'mode' in audit"),
        ("audit: batch\n", "2:8: audit must be a mapping"),
        ("audit:\n  sync: [batch]\n", "3:9: audit.sync must be"),
    ],
)
def test_the_audit_key_is_validated_with_locations(
    tmp_path: Path, text: str, expected: str
) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(f"p.yaml:{expected}"), found


def test_the_audit_key_survives_fuzzing(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    values = ["batch", "durable", "2ms", "0", "-1", "1e309", "[]", "{}", "null", "~", "'x'"]
    keys = ["sync", "window", "mode", "", "sync\u2028"]
    for _ in range(300):
        body = ", ".join(f"{rng.choice(keys)!r}: {rng.choice(values)}" for _ in range(2))
        try:
            audit = load(tmp_path, f"audit: {{{body}}}\n").audit
        except PolicyError as e:
            assert all(str(p).startswith("p.yaml:") for p in e.problems)
        else:
            assert audit.sync in ("durable", "batch") and 0 < audit.window <= 1


def test_a_system_file_sets_the_shared_logs_mode(tmp_path: Path) -> None:
    agent = {"version": 1, "command": ["true"], "pledge": "stdio"}
    write_policy(tmp_path, agent, "plain")
    write_policy(tmp_path, {**agent, "audit": {"sync": "batch", "window": "5ms"}}, "own")
    system = tmp_path / "sys.yaml"
    agents = "agents:\n  a: {policy: plain.yaml}\n  b: {policy: own.yaml}\n"
    system.write_text("version: 1\naudit: {sync: batch, window: 5ms}\n" + agents)
    assert load_system(system).audit == Audit("batch", 0.005)
    system.write_text("version: 1\n" + agents)
    with pytest.raises(PolicyError) as info:
        load_system(system)
    found = [str(p) for p in info.value.problems]
    assert found == [
        f"{system}:4:3: agent 'b': its policy asks for 'audit: sync: batch', but the agents of "
        "a system share the dispatcher's audit log (durable); set 'audit' in the system file"
    ]


def test_a_batch_system_records_its_mode_and_serves(systems: list[Any], tmp_path: Path) -> None:
    s = make(systems, tmp_path, {"a": {}}, extra={"audit": {"sync": "batch", "window": "5ms"}})
    s.up()
    assert s.send("echo in batch mode", to="a") == "in batch mode"
    assert s.down() == 0
    starts = s.audit("start")
    assert starts and all(r["audit"] == {"sync": "batch", "window": 0.005} for r in starts)
    assert [r["agent"] for r in s.audit("exit")] == ["a"]  # synchronous kinds all there
    assert verify(s.state / "audit.jsonl").ok


# ---------------------------------------------------------------------------- SIGKILL

KILLED_AGENT = """
import sandbox
parent = sandbox.connect()
sandbox.pledge("stdio files:read")
n = 0
while True:
    parent.read("files", "f.txt")
    n += 1
    if n % 50 == 0:
        print(n, flush=True)
"""


@pytest.mark.parametrize("sync", ["durable", "batch"])
def test_sigkill_of_the_launcher_loses_nothing_acknowledged(tmp_path: Path, sync: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "f.txt").write_text("x" * 100)
    policy = {
        "version": 1,
        "name": "killed",
        "lock": "agent",
        "pledge": "stdio files:read",
        "resources": {"files": {"type": "dir", "path": str(files)}},
        "audit": {"sync": sync, "window": "50ms"} if sync == "batch" else {"sync": sync},
    }
    pol = write_policy(tmp_path, policy)
    log = tmp_path / "audit.jsonl"
    argv = [sys.executable, "-m", "sandbox", "run", pol, "--audit-log", str(log), "--"]
    proc = subprocess.Popen(
        [*argv, sys.executable, "-c", KILLED_AGENT],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    acknowledged = 0
    while acknowledged < 500:  # reads the parent acknowledged, as the agent counts them
        line = proc.stdout.readline()
        assert line, "the agent stopped before the kill"
        acknowledged = int(line)
    proc.send_signal(signal.SIGKILL)  # the launcher: no clean-up of ours runs
    assert proc.wait(HANG) == -signal.SIGKILL
    records = []
    for raw in log.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):  # a partial last line: its operation never ran
            records.append(json.loads(raw))
    ops = [r for r in records if r["kind"] == "op" and r["op"] == "open"]
    assert len(ops) >= acknowledged
    start = records[0]
    assert start["kind"] == "start" and start["audit"]["sync"] == sync
    if sync == "batch":
        assert start["audit"]["window"] == 0.05
    result = verify(log)
    assert result.ok or result.message.endswith("truncated (no newline at end of file)")
    assert result.records >= acknowledged
