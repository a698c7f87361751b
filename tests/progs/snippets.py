"""Pieces shared by several test files: policies for a Python agent, and agent helpers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# attempt(name, fn) prints {name: ["ok", value]} or {name: [errno, message]}, flushed.
ATTEMPT = """
def attempt(name, fn):
    try:
        res = ["ok", fn()]
    except OSError as e:
        res = [e.errno, str(e)]
    print(json.dumps({name: res}), flush=True)
def read(p):
    with open(p) as f:
        return f.read()
def create(p):
    with open(p, "w") as f:
        f.write("x")
    return True
"""


def python_policy(name: str, pledge: str = "stdio rpath", **extra: Any) -> dict[str, Any]:
    """A policy under which the venv's Python can start (its files unveiled rx)."""
    p: dict[str, Any] = {
        "version": 1,
        "name": name,
        "pledge": pledge,
        "unveil": {"@python": "rx", "@system": "rx"},
    }
    p.update(extra)
    return p


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def sandbox_cli(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    pythonpath: str | None = None,
    timeout: float = 180.0,
) -> subprocess.CompletedProcess[str]:
    """`python -m sandbox ARGS` from this checkout (or `pythonpath`), stdin /dev/null."""
    full = dict(env or os.environ)
    full["PYTHONPATH"] = pythonpath or str(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def audit_records(log: Path) -> list[dict[str, Any]]:
    """The records of an audit log ([] if there is none)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def tcp_servers(ports: Sequence[int], greeting: bytes = b"") -> Iterator[list[int]]:
    """TCP servers on 127.0.0.1 (port 0: any free one), each accepting in a thread and
    sending `greeting` before it closes; yields their ports."""
    servers = []
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        servers.append(s)
    stop = threading.Event()

    def serve(s: socket.socket) -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            with conn:
                if greeting:
                    conn.sendall(greeting)

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield [s.getsockname()[1] for s in servers]
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in servers:
            s.close()


# Kernel audit is host-wide: a test that switches it holds this lock for its whole length,
# so two suites on one machine (a developer's and CI's, two worktrees) never switch it under
# each other's feet (a launcher started while another suite had it on reports refusals that
# the test expects not to be reported).
KERNEL_AUDIT_LOCK = "/run/lock/outheis-sandbox-tests-kernel-audit"


@contextlib.contextmanager
def kernel_audit_switched(enabled: int) -> Iterator[None]:
    """Kernel audit switched to `enabled` for the block, restored to what it was after,
    with every other test run on this machine kept from switching it meanwhile."""
    import fcntl

    from sandbox import kaudit

    lock_dir = os.path.dirname(KERNEL_AUDIT_LOCK)
    path = KERNEL_AUDIT_LOCK if os.path.isdir(lock_dir) else "/tmp/outheis-sandbox-kernel-audit"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = kaudit.status().enabled
        kaudit.set_enabled(enabled)
        try:
            yield
        finally:
            kaudit.set_enabled(before)
            assert kaudit.status().enabled == before
    finally:
        os.close(fd)  # releases the lock


def kernel_audit_unavailable() -> str | None:
    """Why Landlock's audit records cannot be read here (None: they can, as root)."""
    from sandbox import kaudit
    from sandbox.enforce import landlock

    if os.geteuid() != 0:
        return "reading kernel audit records needs root"
    if landlock.abi_version() < landlock.LOG_ABI:
        return f"Landlock ABI {landlock.abi_version()} writes no audit records"
    try:
        kaudit.status()
    except OSError as e:
        return f"no kernel audit here: {e.strerror}"
    return None
