"""No pledged process sets the setuid or setgid bit (SPEC section 5, as OpenBSD masks every
mode with ACCESSPERMS under pledge): every call that takes a mode gets them stripped, and
the rest of the call is performed as asked, so `install -m 4755`, `cp -p` and `tar x` of
such files still work (without the bits). The filter lets a clean mode through; a mode
with one of the bits goes to the parent, which performs the call without them.

The attack it stops: a root agent leaves a setuid-root program that the host runs (the
agent's nosuid mounts hold only in its own mount namespace). It is shown working without
the sandbox: an unprivileged user runs the program the agent made and gets euid 0.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from progs.kit import Box, agent, assert_clean, make_box, ok_direct, results, sandboxed, show

SETID = 0o6000


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


MODE_CALLS = r"""
import struct
d = sys.argv[1]
j = lambda n: ptr(os.fsencode(os.path.join(d, n)))
def mode(n):
    return oct(os.lstat(os.path.join(d, n)).st_mode & 0o7777)
out = {}
fd = raw(2, j("open"), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o4755)             # open
out["open"] = mode("open") if isinstance(fd, int) else fd
out["open_cloexec"] = isinstance(fd, int) and not os.get_inheritable(fd)
out["fchmod"] = raw(91, fd, 0o6755) if isinstance(fd, int) else fd                  # fchmod
out["fchmod_mode"] = mode("open")
fd2 = raw(257, -100, j("openat"), os.O_CREAT | os.O_RDWR, 0o2644)                  # openat
out["openat"] = mode("openat") if isinstance(fd2, int) else fd2
fd3 = raw(85, j("creat"), 0o6700)                                                  # creat
out["creat"] = mode("creat") if isinstance(fd3, int) else fd3
r = raw(83, j("mkdir"), 0o2775)                                                    # mkdir
out["mkdir"] = mode("mkdir") if r == 0 else r
r = raw(258, -100, j("mkdirat"), 0o4700)                                           # mkdirat
out["mkdirat"] = mode("mkdirat") if r == 0 else r
r = raw(133, j("fifo"), stat.S_IFIFO | 0o4644, 0)                                  # mknod
out["mknod"] = mode("fifo") if r == 0 else r
r = raw(259, -100, j("fifoat"), stat.S_IFIFO | 0o2600, 0)                          # mknodat
out["mknodat"] = mode("fifoat") if r == 0 else r
fd4 = raw(257, -100, ptr(os.fsencode(d)), os.O_TMPFILE | os.O_RDWR, 0o4711)         # O_TMPFILE
if isinstance(fd4, int):
    out["tmpfile"] = oct(os.fstat(fd4).st_mode & 0o7777)
else:
    out["tmpfile"] = fd4
r = raw(90, j("creat"), 0o4751)                                                    # chmod
out["chmod"] = mode("creat") if r == 0 else r
out["sticky"] = mode("mkdir") if raw(90, j("mkdir"), 0o1777) == 0 else "?"          # kept
report(**out)
"""
import_stat = "import stat\n"


def _expected(stripped: bool) -> dict[str, object]:
    def m(v: int) -> str:
        return oct(v & ~SETID if stripped else v)

    return {
        "open": m(0o4755),
        "open_cloexec": True,
        "fchmod": 0,
        "fchmod_mode": m(0o6755),
        "openat": m(0o2644),
        "creat": m(0o6700),
        "mkdir": oct(0o775),  # Linux's mkdir ignores both bits itself
        "mkdirat": oct(0o700),
        "mknod": m(0o4644),
        "mknodat": m(0o2600),
        "tmpfile": m(0o4711),
        "chmod": m(0o4751),
        "sticky": oct(0o1777),
    }


def _mode_program() -> list[str]:
    return agent(import_stat + MODE_CALLS)


def _clear(d: Path) -> None:
    for p in d.iterdir():
        if p.is_dir() and not p.is_symlink():
            p.rmdir()
        else:
            p.unlink()


def test_every_mode_taking_call_strips_setuid_and_setgid(box: Box) -> None:
    """open, openat, creat, O_TMPFILE, mknod, mknodat, fchmod, chmod: with the sandbox the
    bits are gone and the call otherwise done as asked (umask 0 here, the sticky bit
    kept); without it they are set (the attack works directly). mkdir strips them on
    Linux by itself."""
    old = os.umask(0)
    try:
        direct = ok_direct([*_mode_program(), str(box.x)])
        _clear(box.x)
        r = sandboxed(
            box,
            [*_mode_program(), str(box.x)],
            promises="stdio rpath wpath cpath dpath fattr",
            unveil=[f"{box.x}:rwc"],
        )
    finally:
        os.umask(old)
    assert direct == _expected(stripped=False), direct
    got = assert_clean(r)
    assert got == _expected(stripped=True), show(r)
    stripped = [o for o in r.ops if o["resource"] == "setid"]
    assert {o["op"] for o in stripped} >= {"open", "openat", "creat", "mknod", "mknodat",
                                          "fchmod"}, r.ops  # fmt: skip
    assert all("setuid/setgid stripped" in o["reason"] for o in stripped)


def test_tmppath_strips_them_too(box: Box) -> None:
    """tmppath allows open/mkdir with any flags: the mode is checked all the same."""
    body = """
    p = os.path.join(sys.argv[1], "t")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o4755)
    os.mknod(p + "f", stat.S_IFIFO | 0o2644)
    report(file=oct(os.stat(p).st_mode & 0o7777), fifo=oct(os.stat(p + "f").st_mode & 0o7777))
    """
    tmp = Path(tempfile.mkdtemp(prefix="perform-setid-", dir="/tmp"))
    try:
        old = os.umask(0)
        try:
            got = assert_clean(
                sandboxed(
                    box,
                    [*agent("import stat\n" + textwrap.dedent(body)), str(tmp)],
                    promises="stdio tmppath dpath",
                )
            )
        finally:
            os.umask(old)
    finally:
        shutil.rmtree(tmp)
    assert got == {"file": oct(0o755), "fifo": oct(0o644)}, got


def test_the_umask_of_the_agent_applies(box: Box) -> None:
    """The parent creates with the agent's own umask, as the kernel would."""
    body = """
    os.umask(0o027)
    fd = os.open(os.path.join(sys.argv[1], "f"), os.O_CREAT | os.O_WRONLY, 0o4777)
    report(f=oct(os.stat(os.path.join(sys.argv[1], "f")).st_mode & 0o7777))
    """
    r = sandboxed(box, [*agent(body), str(box.x)], promises="stdio rpath wpath cpath",
                  unveil=[f"{box.x}:rwc"])  # fmt: skip
    assert assert_clean(r) == {"f": oct(0o750)}, show(r)


def test_creating_outside_the_unveil_stays_refused(box: Box) -> None:
    """The parent's open is checked by Landlock (the performer holds the agent's rules):
    a setuid mode does not open a way around the unveil."""
    out = box.root / "out"
    out.mkdir()
    body = """
    report(open=attempt(os.open, os.path.join(sys.argv[1], "f"), os.O_CREAT | os.O_WRONLY, 0o4755),
           mknod=attempt(os.mknod, os.path.join(sys.argv[1], "p"), 0o10000 | 0o4644))
    """
    cmd = [*agent(body), str(out)]
    assert set(ok_direct(cmd).values()) != {"EACCES"}
    _clear(out)
    r = sandboxed(box, cmd, promises="stdio rpath wpath cpath dpath", unveil=[f"{box.x}:rwc"])
    assert assert_clean(r) == {"open": "EACCES", "mknod": "EACCES"}, show(r)
    assert list(out.iterdir()) == []


def test_without_the_promise_a_setid_mode_is_still_a_violation(box: Box) -> None:
    """Stripping is not a way to gain a promise: open(O_CREAT) without cpath is refused
    whatever the mode, and names cpath."""
    body = (
        "report(open=attempt(os.open, os.path.join(sys.argv[1], 'f'), "
        "os.O_CREAT | os.O_WRONLY, 0o4755))"
    )
    policy = {"version": 1, "pledge": "stdio rpath wpath", "unveil": {str(box.x): "rwc"},
              "violation": "errno"}  # fmt: skip
    r = sandboxed(box, [*agent(body), str(box.x)], promises=None, policy=policy)
    assert r.status == 0 and results(r.stdout) == {"open": "EPERM"}, show(r)
    assert any(v["syscall"] == "openat" and v["promise"] == "cpath" for v in r.violations)


def test_a_broker_file_cannot_be_made_setuid(box: Box) -> None:
    """A dir resource's files are created 0600 by the parent; fchmod of the descriptor the
    broker passed strips the bits like any other."""
    vault = box.root / "vault"
    vault.mkdir()
    body = """
    import sandbox
    parent = sandbox.connect()
    with parent.open("vault", "tool", "w") as f:
        f.write("#!/bin/sh\\n")
        f.flush()
        os.fchmod(f.fileno(), 0o4755)
    report(done="ok")
    """
    policy = {
        "version": 1,
        "pledge": "stdio rpath fattr vault:read vault:write vault:create",
        "resources": {"vault": {"type": "dir", "path": str(vault)}},
    }
    r = sandboxed(box, [*agent(body)], promises=None, policy=policy)
    assert assert_clean(r) == {"done": "ok"}, show(r)
    assert stat.S_IMODE((vault / "tool").stat().st_mode) == 0o755


# --- the attack: a setuid-root program left for the host --------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged test user can reach (pytest's are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="perform-suid-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run_as_user(program: Path) -> str:
    p = subprocess.run(
        ["runuser", "-u", "sandboxtest", "--", str(program), "-u"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return p.stdout.strip() or p.stderr.strip()


LEAVE_SUID = """
import shutil
dest = os.path.join(sys.argv[1], "id")
shutil.copyfile("/usr/bin/id", dest)
os.chmod(dest, 0o4755)
report(mode=oct(os.stat(dest).st_mode & 0o7777))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the attack is a root agent's")
@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser")
def test_a_root_agent_cannot_leave_a_setuid_root_program(box: Box, shared_dir: Path) -> None:
    try:
        import pwd

        pwd.getpwnam("sandboxtest")
    except KeyError:
        pytest.skip("no user sandboxtest (ci/setup creates it)")
    # Without the sandbox: the unprivileged user runs the copy as root.
    assert ok_direct([*agent(LEAVE_SUID), str(shared_dir)]) == {"mode": oct(0o4755)}
    assert _run_as_user(shared_dir / "id") == "0", "the attack should work directly"
    (shared_dir / "id").unlink()
    r = sandboxed(
        box,
        [*agent(LEAVE_SUID), str(shared_dir)],
        promises="stdio rpath wpath cpath fattr",
        unveil=[f"{shared_dir}:rwc", "/usr/bin/id:r"],
    )
    assert assert_clean(r) == {"mode": oct(0o755)}, show(r)
    assert (shared_dir / "id").stat().st_uid == 0
    assert _run_as_user(shared_dir / "id") == "1001"
