"""sandbox.pledge / sandbox.unveil in library mode (no launcher), as on OpenBSD: each test
runs a fresh `python -c` process that restricts itself through the API, makes calls, and
prints one JSON line per attempt (flushed, so the lines written before a kill survive it).
The kernel enforces: Landlock for unveil, a seccomp filter (KILL_PROCESS) for pledge.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from progs.snippets import ATTEMPT

from sandbox.enforce import landlock

pytestmark = pytest.mark.skipif(landlock.abi_version() < 1, reason="kernel lacks Landlock")

_HANG_GUARD = 60.0  # seconds; a guard against a stuck child, not a timing assertion

# attempt(name, fn) prints {name: ["ok", value]} or {name: [errno, message]}.
PRELUDE = (
    """
import errno, json, os, sys, threading
import sandbox
import sandbox.agent.pledge
"""
    + ATTEMPT
)


@dataclass
class Run:
    returncode: int
    results: dict[str, list[Any]]
    stderr: str

    def ok(self, name: str) -> Any:
        assert self.results.get(name, [None])[0] == "ok", (
            f"{name}: {self.results.get(name)}\n{self.stderr}"
        )
        return self.results[name][1]

    def err(self, name: str, code: str) -> str:
        got = self.results.get(name)
        want = getattr(errno, code)
        assert got is not None and got[0] == want, (
            f"{name}: expected {code}, got {got}\n{self.stderr}"
        )
        return str(got[1])

    @property
    def sigsys(self) -> bool:
        return self.returncode == -signal.SIGSYS


def run_py(body: str, cwd: Path) -> Run:
    # Library mode: nothing of a launcher in the environment, even if pytest runs under one.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=_HANG_GUARD,
        check=False,
    )
    results: dict[str, list[Any]] = {}
    for line in proc.stdout.splitlines():
        results.update(json.loads(line))
    return Run(proc.returncode, results, proc.stderr)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """a/, b/, c/ each holding one file; the tests unveil some of them."""
    for d in "abc":
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text(f"file in {d}")
    return tmp_path


# --------------------------------------------------------------------------- unveil


def test_unveil_accumulates_until_unveil_locks_it(tree: Path) -> None:
    r = run_py(
        """
        sandbox.unveil("a", "r")
        sandbox.unveil("b", "r")
        sandbox.unveil("b", "wc")          # letters on one path accumulate
        attempt("c_before_lock", lambda: read("c/f.txt"))  # the view takes effect at the lock
        attempt("lock", lambda: sandbox.unveil())
        attempt("read_a", lambda: read("a/f.txt"))
        attempt("read_b", lambda: read("b/f.txt"))
        attempt("create_b", lambda: create("b/new.txt"))
        attempt("create_a", lambda: create("a/new.txt"))
        attempt("read_c", lambda: read("c/f.txt"))
        attempt("unveil_after_lock", lambda: sandbox.unveil("c", "r"))
        attempt("read_c_again", lambda: read("c/f.txt"))
        attempt("lock_again", lambda: sandbox.unveil())
        """,
        tree,
    )
    assert r.returncode == 0, r
    assert r.ok("c_before_lock") == "file in c"
    r.ok("lock")
    assert r.ok("read_a") == "file in a"
    assert r.ok("read_b") == "file in b"
    r.ok("create_b")
    assert (tree / "b" / "new.txt").exists()
    r.err("create_a", "EACCES")
    assert not (tree / "a" / "new.txt").exists()
    r.err("read_c", "EACCES")
    assert "locked" in r.err("unveil_after_lock", "EPERM")
    r.err("read_c_again", "EACCES")
    r.ok("lock_again")  # locking twice is harmless, as on OpenBSD


def test_first_pledge_locks_unveil(tree: Path) -> None:
    r = run_py(
        """
        sandbox.unveil("a", "r")
        attempt("pledge", lambda: sandbox.pledge("stdio rpath wpath cpath"))
        attempt("read_a", lambda: read("a/f.txt"))
        attempt("read_c", lambda: read("c/f.txt"))
        attempt("unveil_after_pledge", lambda: sandbox.unveil("c", "r"))
        """,
        tree,
    )
    assert r.returncode == 0, r
    r.ok("pledge")
    assert r.ok("read_a") == "file in a"
    r.err("read_c", "EACCES")
    r.err("unveil_after_pledge", "EPERM")


def test_unveil_argument_errors_change_nothing(tree: Path) -> None:
    r = run_py(
        """
        attempt("bad_letter", lambda: sandbox.unveil("a", "rz"))
        attempt("missing_path", lambda: sandbox.unveil("does/not/exist", "r"))
        attempt("path_only", lambda: sandbox.unveil("a"))
        attempt("perms_only", lambda: sandbox.unveil(None, "r"))
        attempt("read_c_unlocked", lambda: read("c/f.txt"))
        attempt("good", lambda: sandbox.unveil("a", "r"))
        attempt("lock", lambda: sandbox.unveil())
        attempt("read_a", lambda: read("a/f.txt"))
        attempt("read_c_locked", lambda: read("c/f.txt"))
        """,
        tree,
    )
    assert r.returncode == 0, r
    assert "rz" in r.err("bad_letter", "EINVAL")
    assert "does/not/exist" in r.err("missing_path", "ENOENT")
    r.err("path_only", "EINVAL")
    r.err("perms_only", "EINVAL")
    assert r.ok("read_c_unlocked") == "file in c"  # the errors did not lock anything
    r.ok("good")
    r.ok("lock")
    assert r.ok("read_a") == "file in a"
    r.err("read_c_locked", "EACCES")


# --------------------------------------------------------------------------- pledge


def test_pledge_narrows_and_the_dropped_promise_kills(tree: Path) -> None:
    r = run_py(
        """
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        attempt("read_wide", lambda: read("a/f.txt"))
        attempt("narrow", lambda: sandbox.pledge("stdio"))
        attempt("read_narrow", lambda: read("a/f.txt"))
        """,
        tree,
    )
    r.ok("pledge")
    assert r.ok("read_wide") == "file in a"
    r.ok("narrow")
    assert "read_narrow" not in r.results, r
    assert r.sigsys, f"expected SIGSYS, got {r.returncode}\n{r.stderr}"


def test_pledge_cannot_widen_and_the_refusal_changes_nothing(tree: Path) -> None:
    r = run_py(
        """
        import socket
        sandbox.pledge("stdio rpath")
        attempt("widen", lambda: sandbox.pledge("stdio inet"))
        attempt("read_after", lambda: read("a/f.txt"))
        attempt("same", lambda: sandbox.pledge("stdio rpath"))
        attempt("socket", lambda: socket.socket().close() or True)
        """,
        tree,
    )
    assert "inet" in r.err("widen", "EPERM")
    assert r.ok("read_after") == "file in a"  # rpath survived the refused pledge
    r.ok("same")
    assert "socket" not in r.results and r.sigsys, r  # inet was not granted


def test_unknown_promise_is_einval_and_nothing_is_pledged(tree: Path) -> None:
    r = run_py(
        """
        attempt("unknown", lambda: sandbox.pledge("stdio rpath fly"))
        attempt("unknown_exec", lambda: sandbox.pledge("stdio exec", "stdio fly"))
        attempt("create_unpledged", lambda: create("a/new.txt"))
        attempt("first", lambda: sandbox.pledge("stdio rpath"))
        attempt("read", lambda: read("a/f.txt"))
        attempt("create_pledged", lambda: create("b/new.txt"))
        """,
        tree,
    )
    assert "fly" in r.err("unknown", "EINVAL")
    assert "fly" in r.err("unknown_exec", "EINVAL")
    r.ok("create_unpledged")
    assert (tree / "a" / "new.txt").exists()
    r.ok("first")  # still the first pledge: any promise could have been taken
    assert r.ok("read") == "file in a"
    assert "create_pledged" not in r.results and r.sigsys, r
    assert not (tree / "b" / "new.txt").exists()


def test_pledge_none_leaves_a_set_unchanged(tree: Path) -> None:
    r = run_py(
        """
        attempt("none_first", lambda: sandbox.pledge(None))
        attempt("create_after_none", lambda: create("a/new.txt"))
        attempt("exec_only_first", lambda: sandbox.pledge(None, "stdio"))
        attempt("pledge", lambda: sandbox.pledge("stdio rpath", "stdio rpath"))
        attempt("none_again", lambda: sandbox.pledge(None))
        attempt("read", lambda: read("a/f.txt"))
        attempt("widen_exec", lambda: sandbox.pledge(None, "stdio rpath wpath"))
        attempt("narrow_exec", lambda: sandbox.pledge(None, "stdio"))
        attempt("read_still", lambda: read("a/f.txt"))
        attempt("create_pledged", lambda: create("b/new.txt"))
        """,
        tree,
    )
    r.ok("none_first")
    r.ok("create_after_none")  # pledge(None) on an unpledged process restricts nothing
    assert (tree / "a" / "new.txt").exists()
    r.err("exec_only_first", "EINVAL")
    r.ok("pledge")
    r.ok("none_again")
    assert r.ok("read") == "file in a"
    assert "wpath" in r.err("widen_exec", "EPERM")
    r.ok("narrow_exec")
    assert r.ok("read_still") == "file in a"  # narrowing execpromises leaves the pledge
    assert "create_pledged" not in r.results and r.sigsys, r


def test_library_execpromises_narrower_than_exec_promises_are_eopnotsupp(tree: Path) -> None:
    # Documented design: without a parent no one can tell which process has exec'd.
    r = run_py(
        """
        attempt("narrower", lambda: sandbox.pledge("stdio rpath proc exec", "stdio rpath"))
        attempt("create_unpledged", lambda: create("a/new.txt"))
        attempt("equal", lambda: sandbox.pledge("stdio rpath proc exec", "stdio rpath proc exec"))
        attempt("read", lambda: read("a/f.txt"))
        attempt("create_pledged", lambda: create("b/new.txt"))
        """,
        tree,
    )
    assert "sandbox run" in r.err("narrower", "EOPNOTSUPP")
    r.ok("create_unpledged")  # the refused pledge installed nothing
    r.ok("equal")
    assert r.ok("read") == "file in a"
    assert "create_pledged" not in r.results and r.sigsys, r


def test_refused_pledge_does_not_lock_unveil(tree: Path) -> None:
    # A pledge that fails changes nothing: the pending unveils stay pending, so the agent
    # can still add the path it forgot and try again.
    r = run_py(
        """
        sandbox.unveil("a", "r")
        attempt("refused", lambda: sandbox.pledge("stdio rpath proc exec", "stdio rpath"))
        attempt("read_c", lambda: read("c/f.txt"))
        attempt("unveil_more", lambda: sandbox.unveil("b", "r"))
        """,
        tree,
    )
    assert r.returncode == 0, r
    r.err("refused", "EOPNOTSUPP")
    assert r.ok("read_c") == "file in c", "a refused pledge applied the unveils (Landlock)"
    r.ok("unveil_more")


# --------------------------------------------------------------------------- threads


def test_unveil_with_a_live_thread_is_ebusy_naming_it(tree: Path) -> None:
    r = run_py(
        """
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="worker-7")
        t.start()
        sandbox.unveil("a", "r")
        attempt("lock", lambda: sandbox.unveil())
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        attempt("read_c_unlocked", lambda: read("c/f.txt"))
        ev.set()
        t.join()
        attempt("lock_alone", lambda: sandbox.unveil())
        attempt("read_a", lambda: read("a/f.txt"))
        attempt("read_c_locked", lambda: read("c/f.txt"))
        """,
        tree,
    )
    assert r.returncode == 0, r
    assert "worker-7" in r.err("lock", "EBUSY")
    assert "worker-7" in r.err("pledge", "EBUSY")
    assert r.ok("read_c_unlocked") == "file in c"
    r.ok("lock_alone")
    assert r.ok("read_a") == "file in a"
    r.err("read_c_locked", "EACCES")


def test_pledge_without_unveil_applies_to_live_threads(tree: Path) -> None:
    r = run_py(
        """
        ev = threading.Event()
        def worker():
            ev.wait()
            attempt("thread_read", lambda: read("a/f.txt"))
            attempt("thread_create", lambda: create("a/new.txt"))
        t = threading.Thread(target=worker, name="worker")
        t.start()
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        ev.set()
        t.join()
        attempt("main_after", lambda: True)
        """,
        tree,
    )
    r.ok("pledge")  # no unveils: nothing for Landlock, so a live thread is fine
    assert r.ok("thread_read") == "file in a"
    assert "thread_create" not in r.results and "main_after" not in r.results, r
    assert r.sigsys, f"the other thread's openat(O_CREAT) did not kill the process: {r}"
    assert not (tree / "a" / "new.txt").exists()


def test_a_joined_thread_does_not_make_unveil_busy(tree: Path) -> None:
    # Thread.join() returns when Python is done with the thread, a moment before the kernel
    # drops it from /proc/self/task; an agent that joined its threads must be able to lock.
    # Many forked children, each: start a thread, join it, lock unveil; none may get EBUSY.
    r = run_py(
        """
        from sandbox.enforce import landlock
        landlock.abi_version()  # load everything once, before the forks
        codes = []
        for _ in range(300):
            pid = os.fork()
            if pid == 0:
                ev = threading.Event()
                t = threading.Thread(target=ev.wait, name="short-lived")
                t.start()
                ev.set()
                t.join()
                try:
                    sandbox.unveil("a", "r")
                    sandbox.unveil()
                    os._exit(0)
                except OSError as e:
                    os._exit(100 + (e.errno or 0))
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        attempt("codes", lambda: {str(c): codes.count(c) for c in sorted(set(codes))})
        """,
        tree,
    )
    assert r.returncode == 0, r
    codes = r.ok("codes")
    assert codes == {"0": 300}, f"exit codes (100+errno): {codes}; {100 + errno.EBUSY} is EBUSY"
