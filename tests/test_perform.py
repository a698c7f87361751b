"""The parent performs the path-based calls Landlock cannot check (SPEC section 8).

Every brokered call on both sides: allowed on a file beneath an unveil with 'w' and the
promise; refused outside it, without the promise, through a symlink or a '..' out of the
tree, through a descriptor opened before the lock, through /proc/self/fd magic links, and
while another thread swaps the path between the call and the decision. Each refusal is
also tried WITHOUT the sandbox, where it succeeds: that is what makes the tests able to
fail. The calls are made with raw system calls, so each syscall number is the one tested.
"""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from progs.kit import (
    PY,
    ROOT,
    Box,
    agent,
    assert_clean,
    assert_killed,
    ok_direct,
    results,
    sandboxed,
    show,
)

from sandbox.testing import write_policy

# The agent's side: each brokered call by its number, on sys.argv[2] (and a dirfd).
CALLS = r"""
import struct
AT_FDCWD, AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH = -100, 0x100, 0x1000
def call(name, path, uid=None, gid=None, dirfd=AT_FDCWD, flags=0):
    p = ptr(os.fsencode(path))
    u = os.getuid() if uid is None else uid
    g = os.getgid() if gid is None else gid
    tv = ptr(struct.pack("=qqqq", 1000, 5, 2000, 7))            # struct timeval[2]
    ts = ptr(struct.pack("=qqqq", 1000, 5000, 2000, 7000))      # struct timespec[2]
    ub = ptr(struct.pack("=qq", 1000, 2000))                    # struct utimbuf
    nm, val = ptr(b"user.perform"), ptr(b"v1")
    xa = ptr(struct.pack("=QII", val, 2, 0))                    # struct xattr_args
    table = {
        "chmod": (90, p, 0o640),
        "fchmodat": (268, dirfd, p, 0o640),
        "fchmodat2": (452, dirfd, p, 0o640, flags),
        "chown": (92, p, u, g),
        "lchown": (94, p, u, g),
        "fchownat": (260, dirfd, p, u, g, flags),
        "utime": (132, p, ub),
        "utimes": (235, p, tv),
        "futimesat": (261, dirfd, p, tv),
        "utimensat": (280, dirfd, p, ts, flags),
        "setxattr": (188, p, nm, val, 2, 0),
        "lsetxattr": (189, p, nm, val, 2, 0),
        "setxattrat": (463, dirfd, p, flags, nm, xa, 16),
        "removexattr": (197, p, nm),
        "lremovexattr": (198, p, nm),
        "removexattrat": (466, dirfd, p, flags, nm),
    }
    r = raw(*table[name])
    return "ok" if r == 0 else r
"""

# What each call changes, seen from the host: (name of the change, how to read it).
MODE = ("mode", lambda p: stat.S_IMODE(os.lstat(p).st_mode))
TIMES = ("mtime", lambda p: int(os.lstat(p).st_mtime))
XATTR = ("xattr", lambda p: os.getxattr(p, "user.perform", follow_symlinks=False))
OWNER = ("owner", lambda p: (os.lstat(p).st_uid, os.lstat(p).st_gid))
EFFECT = {
    "chmod": MODE,
    "fchmodat": MODE,
    "fchmodat2": MODE,
    "utime": TIMES,
    "utimes": TIMES,
    "futimesat": TIMES,
    "utimensat": TIMES,
    "setxattr": XATTR,
    "lsetxattr": XATTR,
    "setxattrat": XATTR,
    "chown": OWNER,
    "lchown": OWNER,
    "fchownat": OWNER,
}
REMOVERS = ("removexattr", "lremovexattr", "removexattrat")
ALL = sorted([*EFFECT, *REMOVERS])
PROMISES = "stdio rpath fattr chown"


def _fresh(path: Path) -> None:
    """A file in a known state: mode 0600, mtime 1e6, an xattr to remove."""
    if not path.exists():
        path.write_text("data")
    path.chmod(0o600)
    os.utime(path, (1_000_000, 1_000_000))
    os.setxattr(path, "user.perform", b"old")


def _state(path: Path) -> tuple[Any, ...]:
    st = path.stat()
    try:
        xattr: bytes | None = os.getxattr(path, "user.perform")
    except OSError:
        xattr = None
    return (stat.S_IMODE(st.st_mode), int(st.st_mtime), xattr, st.st_uid, st.st_gid)


def _changed(name: str, before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    if name in REMOVERS:
        return before[2] is not None and after[2] is None
    if name in ("chown", "lchown", "fchownat"):
        return True  # to the agent's own ids: no visible change, the result says it
    return before != after


@pytest.fixture
def box(tmp_path: Path) -> Box:
    from progs.kit import make_box

    return make_box(tmp_path)


def prog(body: str) -> list[str]:
    return agent(CALLS + textwrap.dedent(body))


def _run(
    box: Box,
    body: str,
    *args: str,
    promises: str = PROMISES,
    unveil: list[str] | None = None,
    **kw: Any,
) -> Any:
    return sandboxed(
        box,
        [*prog(body), *args],
        promises=promises,
        unveil=[f"{box.x}:rwc"] if unveil is None else unveil,
        **kw,
    )


@pytest.mark.parametrize("name", ALL)
def test_inside_the_unveil_the_call_is_performed(box: Box, name: str) -> None:
    """Allowed: the file lies beneath an unveil with 'w' and the promise is held. The call
    changes the file (seen from the host) and an op record says allow, with the path."""
    target = box.x / "mine.txt"
    _fresh(target)
    before = _state(target)
    r = _run(box, f"report(r=call({name!r}, sys.argv[1]))", str(target))
    assert assert_clean(r) == {"r": "ok"}, show(r)
    assert _changed(name, before, _state(target)), (name, before, _state(target))
    ops = [(o["op"], o["path"], o["decision"]) for o in r.ops]
    assert ops == [(name, str(target), "allow")], r.ops


@pytest.mark.parametrize("name", ALL)
def test_outside_the_unveil_the_call_is_refused(box: Box, name: str) -> None:
    """Refused: the same call on a file outside every unveil fails with EACCES (what
    Landlock answers for an open), recorded as a denied op, the file untouched. Without
    the sandbox the same program changes it."""
    cmd = [*prog(f"report(r=call({name!r}, sys.argv[1]))"), str(box.secret)]
    _fresh(box.secret)
    before = _state(box.secret)
    assert ok_direct(cmd) == {"r": "ok"}
    assert _changed(name, before, _state(box.secret))
    _fresh(box.secret)
    before = _state(box.secret)
    r = _run(box, f"report(r=call({name!r}, sys.argv[1]))", str(box.secret))
    assert assert_clean(r) == {"r": "EACCES"}, show(r)
    assert _state(box.secret) == before
    assert [(o["path"], o["decision"]) for o in r.ops] == [(str(box.secret), "deny")], r.ops
    assert f"unveil refused {name} {box.secret} (write): add '{box.secret}: w'" in r.stderr


@pytest.mark.parametrize("name", ["chmod", "utimensat", "setxattr", "lchown"])
def test_unveiled_without_w_is_refused(box: Box, name: str) -> None:
    """'w' is the letter OpenBSD's kernel asks for (vfs_syscalls.c: UNVEIL_WRITE for
    chmod, chown, utimes): a file unveiled 'rc' is readable and creatable, not changeable;
    the closest enclosing unveil decides."""
    ro = box.x / "ro"
    ro.mkdir()
    target = ro / "f.txt"
    _fresh(target)
    before = _state(target)
    r = _run(
        box,
        f"report(r=call({name!r}, sys.argv[1]))",
        str(target),
        unveil=[f"{box.x}:rwc", f"{ro}:rc"],
    )
    assert assert_clean(r) == {"r": "EACCES"}, show(r)
    assert _state(target) == before


@pytest.mark.parametrize(
    ("name", "promises", "missing"),
    [
        ("chmod", "stdio rpath", "fattr"),
        ("utimensat", "stdio rpath", "fattr"),
        ("setxattr", "stdio rpath", "fattr"),
        ("chown", "stdio rpath", "fattr"),
        ("chmod", "stdio fattr", "rpath"),  # as on OpenBSD, a path lookup needs rpath
    ],
)
def test_without_the_promise_the_call_is_a_violation(
    box: Box, name: str, promises: str, missing: str
) -> None:
    """Without 'fattr' (or 'chown') the filter does not even route the call to be performed:
    it is a violation naming what is missing, and with violation: kill the agent ends."""
    target = box.x / "mine.txt"
    _fresh(target)
    before = _state(target)
    # stdio alone cannot start Python (the loader needs rpath): lock itself afterwards.
    body = f"import sandbox\nsandbox.pledge({promises!r})\nreport(r=call({name!r}, sys.argv[1]))"
    policy = {
        "version": 1,
        "lock": "agent",
        "pledge": "stdio rpath fattr chown unveil",
        "unveil": {str(box.x): "rwc"},
    }
    r = sandboxed(box, [*prog(body), str(target)], promises=None, policy=policy)
    assert_killed(r, name, missing)
    assert _state(target) == before


def test_symlink_out_of_the_tree(box: Box) -> None:
    """A symlink inside the tree to a file outside: chmod follows it and is refused (the
    file resolved is outside); lchown acts on the symlink itself, which is inside."""
    link = box.x / "link"
    link.symlink_to(box.secret)
    body = """
    report(chmod=call("chmod", sys.argv[1]), lchown=call("lchown", sys.argv[1]),
           nofollow=call("fchmodat2", sys.argv[1], flags=AT_SYMLINK_NOFOLLOW))
    """
    cmd = [*prog(body), str(link)]
    _fresh(box.secret)
    assert ok_direct(cmd)["chmod"] == "ok" and stat.S_IMODE(box.secret.stat().st_mode) == 0o640
    _fresh(box.secret)
    got = assert_clean(_run(box, body, str(link)))
    # fchmodat2(AT_SYMLINK_NOFOLLOW) on a symlink: Linux cannot chmod symlinks.
    assert got == {"chmod": "EACCES", "lchown": "ok", "nofollow": "ENOTSUP"}, got
    assert stat.S_IMODE(box.secret.stat().st_mode) == 0o600


def test_dotdot_out_of_the_tree(box: Box) -> None:
    """'..' is resolved as the agent's kernel would: x/../secret is the secret, refused;
    x/sub/../mine.txt is inside, performed."""
    (box.x / "sub").mkdir()
    mine = box.x / "mine.txt"
    _fresh(mine)
    _fresh(box.secret)
    out = f"{box.x}/../{box.secret.name}"
    body = "report(out=call('chmod', sys.argv[1]), inside=call('chmod', sys.argv[2]))"
    cmd = [*prog(body), out, f"{box.x}/sub/../mine.txt"]
    assert ok_direct(cmd) == {"out": "ok", "inside": "ok"}
    _fresh(mine)
    _fresh(box.secret)
    got = assert_clean(_run(box, body, out, f"{box.x}/sub/../mine.txt"))
    assert got == {"out": "EACCES", "inside": "ok"}, got
    assert stat.S_IMODE(box.secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(mine.stat().st_mode) == 0o640


def test_relative_paths_from_the_agents_cwd_and_dirfd(box: Box) -> None:
    """Relative paths resolve from the agent's own cwd and from the dirfd it passes."""
    (box.x / "sub").mkdir()
    mine = box.x / "sub" / "mine.txt"
    _fresh(mine)
    body = """
    os.chdir(sys.argv[1])
    d = os.open("sub", os.O_PATH | os.O_DIRECTORY)
    report(cwd=call("chmod", "sub/mine.txt"), dirfd=call("utimensat", "mine.txt", dirfd=d),
           bad=call("fchmodat", "mine.txt", dirfd=999), notdir=call("fchmodat", "x", dirfd=0))
    """
    got = assert_clean(_run(box, body, str(box.x)))
    assert got == {"cwd": "ok", "dirfd": "ok", "bad": "EBADF", "notdir": "ENOTDIR"}, got
    assert stat.S_IMODE(mine.stat().st_mode) == 0o640 and int(mine.stat().st_mtime) == 2000


LOCK_AFTER_OPENING = """
import sandbox
outside_dir = os.open(os.path.dirname(sys.argv[1]), os.O_PATH | os.O_DIRECTORY)
outside_file = os.open(sys.argv[1], os.O_PATH)
if os.environ.get("SANDBOX_AGENT"):  # under the launcher: lock now (directly: do not)
    sandbox.unveil(sys.argv[2], "rwc")
    sandbox.pledge("stdio rpath fattr chown")
name = os.path.basename(sys.argv[1])
report(
    dirfd=call("fchmodat", name, dirfd=outside_dir),
    empty=call("fchmodat2", "", dirfd=outside_file, flags=AT_EMPTY_PATH),
    empty_chown=call("fchownat", "", dirfd=outside_file, flags=AT_EMPTY_PATH),
    magic=call("chmod", f"/proc/self/fd/{outside_file}"),
    dev_fd=call("utimes", f"/dev/fd/{outside_file}"),
    inside_magic=call("chmod", f"/proc/self/fd/{os.open(sys.argv[3], os.O_PATH)}"),
)
"""


def test_descriptors_opened_before_the_lock_and_magic_links(box: Box) -> None:
    """A directory or O_PATH descriptor opened before the lock reaches a file outside the
    unveil: the *at forms with that dirfd, AT_EMPTY_PATH on it and /proc/self/fd/N (the
    magic link of it) are all decided on where the file lies, and refused; the magic
    link of an inside file is performed (glibc's fchmodat(AT_SYMLINK_NOFOLLOW) uses it)."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    _fresh(box.secret)
    args = [str(box.secret), str(box.x), str(mine)]
    direct = ok_direct(
        [*prog(LOCK_AFTER_OPENING), *args],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert set(direct.values()) == {"ok"}, direct
    _fresh(box.secret)
    _fresh(mine)
    before = _state(box.secret)
    policy = {
        "version": 1,
        "lock": "agent",
        "pledge": "stdio rpath fattr chown unveil",
        "unveil": {str(box.x): "rwc"},
    }
    r = sandboxed(box, [*prog(LOCK_AFTER_OPENING), *args], promises=None, policy=policy)
    got = assert_clean(r)
    assert got == {
        "dirfd": "EACCES",
        "empty": "EACCES",
        "empty_chown": "EACCES",
        "magic": "EACCES",
        "dev_fd": "EACCES",
        "inside_magic": "ok",
    }, got
    assert _state(box.secret) == before
    assert stat.S_IMODE(mine.stat().st_mode) == 0o640


def test_other_magic_links_are_refused(box: Box) -> None:
    """Magic links other than the agent's own fd table (its root, cwd, another process's
    fds) are not followed: the performer would resolve them in its own context."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    body = """
    os.chdir(sys.argv[1])
    report(root=call("chmod", "/proc/self/root" + sys.argv[2]),
           cwd=call("chmod", "/proc/self/cwd/mine.txt"),
           pid_cwd=call("chmod", f"/proc/{os.getpid()}/cwd/mine.txt"))
    """
    cmd = [*prog(body), str(box.x), str(mine)]
    assert ok_direct(cmd) == {"root": "ok", "cwd": "ok", "pid_cwd": "ok"}
    _fresh(mine)
    got = assert_clean(_run(box, body, str(box.x), str(mine), unveil=[f"{box.x}:rwc", "/proc:r"]))
    # /proc/PID: the agent's pid is of its own namespace; whatever it names, it is refused.
    assert got["root"] == got["cwd"] == "ELOOP" and got["pid_cwd"] in {"ELOOP", "EACCES"}, got
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600


RACE = """
import threading
d = sys.argv[1]
t, u = os.path.join(d, "t"), os.path.join(d, "u")
secret_mode = os.stat(sys.argv[3]).st_mode
stop = False
swaps = 0
def swap():
    # renameat2(RENAME_EXCHANGE): t is, in turn, a regular file inside and a symlink out.
    global swaps
    a, b = ptr(os.fsencode(t)), ptr(os.fsencode(u))
    while not stop:
        raw(316, AT_FDCWD, a, AT_FDCWD, b, 2)
        swaps += 1
th = threading.Thread(target=swap)
th.start()
while swaps < 10:
    pass
outcomes = {}
for i in range(int(sys.argv[2])):
    r = call("chmod", t)
    outcomes[r] = outcomes.get(r, 0) + 1
    changed = os.stat(sys.argv[3]).st_mode != secret_mode
    if i > 50 and "ok" in outcomes and ("EACCES" in outcomes or changed):
        break
stop = True
th.join()
report(outcomes=outcomes, swaps=swaps)
"""


def test_a_rename_race_cannot_redirect_the_call(box: Box) -> None:
    """Another thread exchanges the path between a regular file inside and a symlink to a
    file outside while the parent decides. The decision is made on the inode the path
    resolved to, and the call is made on that same inode: the outside file is never
    changed, while the inside one is, and both outcomes occur (the race ran). Without the
    sandbox the same program changes the outside file."""
    inside = box.x / "t"
    (box.x / "u").symlink_to(box.secret)
    cmd = [*prog(RACE), str(box.x), "20000", str(box.secret)]
    _fresh(inside)
    _fresh(box.secret)
    assert ok_direct(cmd)["outcomes"].get("ok", 0) > 0
    assert stat.S_IMODE(box.secret.stat().st_mode) == 0o640  # the attack works directly
    # Reset: t regular, u the symlink (the direct run may have left them swapped).
    for p in (box.x / "t", box.x / "u"):
        p.unlink()
    _fresh(inside)
    (box.x / "u").symlink_to(box.secret)
    _fresh(box.secret)
    before = _state(box.secret)
    r = _run(
        box, RACE, str(box.x), "20000", str(box.secret), promises="stdio rpath cpath fattr thread"
    )
    got = assert_clean(r)
    assert stat.S_IMODE(box.secret.stat().st_mode) == 0o600, got
    assert _state(box.secret) == before
    outcomes = got["outcomes"]
    assert outcomes.get("ok", 0) > 0 and outcomes.get("EACCES", 0) > 0, got
    assert got["swaps"] > 0
    changed = [o for o in r.ops if o["decision"] == "allow"]
    assert changed and all(o["path"] in (str(box.x / "t"), str(box.x / "u")) for o in changed)


def test_validation_as_the_kernel(box: Box) -> None:
    """Bad arguments get the kernel's errno before any lookup: unknown AT_ flags EINVAL,
    microseconds out of range EINVAL, an empty path ENOENT, a bad pointer EFAULT, an
    xattr name of 256 bytes ERANGE; a missing file ENOENT."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    body = """
    import struct
    p = ptr(os.fsencode(sys.argv[1]))
    bad_tv = ptr(struct.pack("=qqqq", 0, 1_000_000, 0, 0))
    long_name = ptr(b"user." + b"n" * 251)
    report(flags=raw(452, AT_FDCWD, p, 0o640, 0x4), usec=raw(235, p, bad_tv),
           empty=call("chmod", ""), fault=raw(90, 16, 0o640),
           name=raw(188, p, long_name, ptr(b"v"), 1, 0),
           xflags=raw(188, p, ptr(b"user.x"), ptr(b"v"), 1, 8),
           missing=call("chmod", sys.argv[1] + ".nope"))
    """
    cmd = [*prog(body), str(mine)]
    direct = ok_direct(cmd)
    got = assert_clean(_run(box, body, str(mine)))
    assert (
        got
        == direct
        == {
            "flags": "EINVAL",
            "usec": "EINVAL",
            "empty": "ENOENT",
            "fault": "EFAULT",
            "name": "ERANGE",
            "xflags": "EINVAL",
            "missing": "ENOENT",
        }
    ), (got, direct)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the point is a root launcher")
def test_the_call_has_the_agents_standing_not_the_parents(box: Box) -> None:
    """A root launcher performs the call with the agent's ids and no capabilities: a root
    agent (capless) cannot give its file to another user or chmod another user's file,
    although the launcher could, and the same program run directly as root can."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    theirs = box.x / "theirs.txt"
    _fresh(theirs)
    os.chown(theirs, 1001, 1001)
    body = """
    report(give=call("chown", sys.argv[1], uid=1001, gid=1001),
           chmod_theirs=call("chmod", sys.argv[2]),
           chgrp_own=call("chown", sys.argv[1], uid=-1, gid=0))
    """
    cmd = [*prog(body), str(mine), str(theirs)]
    assert ok_direct(cmd) == {"give": "ok", "chmod_theirs": "ok", "chgrp_own": "ok"}
    os.chown(mine, 0, 0)
    _fresh(mine)
    _fresh(theirs)
    got = assert_clean(_run(box, body, str(mine), str(theirs)))
    assert got == {"give": "EPERM", "chmod_theirs": "EPERM", "chgrp_own": "ok"}, got
    assert (mine.stat().st_uid, stat.S_IMODE(theirs.stat().st_mode)) == (0, 0o600)


def test_fattr_alone_chowns_only_to_the_agents_own_ids(box: Box) -> None:
    """OpenBSD's 'fattr' carries chown to the caller's own uid and groups (pledge_chown);
    another uid needs 'chown' (and then still the kernel's CAP_CHOWN, which is dropped)."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    body = "report(own=call('chown', sys.argv[1]), other=call('chown', sys.argv[1], uid=4242))"
    r = _run(box, body, str(mine), promises="stdio rpath fattr")
    assert assert_clean(r) == {"own": "ok", "other": "EPERM"}, show(r)
    assert any(o["resource"] == "promise" and o["decision"] == "deny" for o in r.ops), r.ops


def test_descriptor_forms_still_work_without_the_parent(box: Box) -> None:
    """fchmod/fchown/futimens/fsetxattr on an open file are allowed by the filter itself:
    no op record, no performer."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    body = """
    fd = os.open(sys.argv[1], os.O_RDONLY)
    os.fchmod(fd, 0o640); os.utime(fd, (5, 5)); os.setxattr(fd, "user.fd", b"1")
    os.chown(fd, os.getuid(), os.getgid())
    report(done="ok")
    """
    r = _run(box, body, str(mine))
    assert assert_clean(r) == {"done": "ok"} and r.ops == [], show(r)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o640


def test_violation_errno_and_log_modes_still_decide_by_unveil(box: Box) -> None:
    """The unveil refusal is an errno like Landlock's, whatever `violation:` says: log mode
    (learning) does not let an outside chmod through."""
    _fresh(box.secret)
    for mode in ("errno", "log"):
        policy = {
            "version": 1,
            "pledge": PROMISES,
            "unveil": {str(box.x): "rwc"},
            "violation": mode,
        }
        r = sandboxed(
            box, [*prog("report(r=call('chmod', sys.argv[1]))"), str(box.secret)],
            promises=None, policy=policy,
        )  # fmt: skip
        assert assert_clean(r) == {"r": "EACCES"}, (mode, show(r))
    assert stat.S_IMODE(box.secret.stat().st_mode) == 0o600


def test_the_op_record_is_written_before_the_agent_sees_the_result(box: Box) -> None:
    """Write-ahead: the agent reads the audit log (unveiled r) right after its chmod
    returns and finds the op record already there."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    log = box.x / "audit.jsonl"
    body = """
    r = call("chmod", sys.argv[1])
    text = open(sys.argv[2]).read()
    report(r=r, recorded='"op":"chmod"' in text and '"decision":"allow"' in text)
    """
    argv = [PY, "-m", "sandbox", "run", "-p", PROMISES, "-v", "@python:rx", "-v", "@system:rx",
            "-v", f"{box.x}:rwc", "--audit-log", str(log), "--", *prog(body),
            str(mine), str(log)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=box.run)
    assert p.returncode == 0 and results(p.stdout) == {"r": "ok", "recorded": True}, p


def test_sandbox_audit_verify_accepts_the_op_records(box: Box) -> None:
    mine = box.x / "mine.txt"
    _fresh(mine)
    r = _run(
        box,
        "report(r=call('chmod', sys.argv[1]), o=call('chmod', sys.argv[2]))",
        str(mine),
        str(box.secret),
    )
    assert assert_clean(r) == {"r": "ok", "o": "EACCES"}
    p = subprocess.run(
        [PY, "-m", "sandbox", "audit", "verify", r.log], capture_output=True, text=True
    )
    assert p.returncode == 0, p


def test_policy_file_runs_it_too(box: Box) -> None:
    """The same through a policy file (not only -p/-v): 'explain' shows the path forms as
    decided by the parent."""
    mine = box.x / "mine.txt"
    _fresh(mine)
    policy = write_policy(
        box.run,
        {
            "version": 1,
            "pledge": PROMISES,
            "unveil": {"@python": "rx", "@system": "rx", str(box.x): "rwc"},
        },
        "perf",
    )
    p = subprocess.run([PY, "-m", "sandbox", "explain", policy], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert p.returncode == 0, p
    fattr = next(line for line in p.stdout.splitlines() if line.startswith("fattr"))
    assert "chmod" in fattr and "utimensat" in fattr and "setxattr" in fattr, p.stdout
    done = p.stdout.split("PERFORMED BY THE PARENT", 1)[1].split("\n\n", 1)[0]
    assert "chmod" in done and "unveil with 'w'" in done and "setuid/setgid" in done, done


def test_lock_agent_declared_unveils_bound_the_parent(box: Box) -> None:
    """Under lock: agent the parent decides by what the agent declared, not by the policy:
    a file in the policy's tree but outside the declared unveil is refused, by the unveil
    check (chmod) and by the performer's own Landlock rules (an O_CREAT with a setuid mode
    it performs). A second, narrower pledge restarts the performer with what is left."""
    (box.x / "sub").mkdir()
    (box.x / "other").mkdir()
    inside, other = box.x / "sub" / "f", box.x / "other" / "f"
    _fresh(inside)
    _fresh(other)
    body = """
    import sandbox
    sandbox.unveil(sys.argv[1], "rwc")
    sandbox.pledge("stdio rpath wpath cpath fattr")
    j = lambda *p: os.path.join(*p)
    def create(p):
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o4755))
        return oct(os.stat(p).st_mode & 0o7777)
    report(inside=call("chmod", j(sys.argv[1], "f")), other=call("chmod", sys.argv[2]),
           new_inside=attempt(create, j(sys.argv[1], "n")),
           new_other=attempt(create, j(os.path.dirname(sys.argv[2]), "n")))
    sandbox.pledge("stdio rpath fattr")
    report(after=call("utimensat", j(sys.argv[1], "f")))
    """
    policy = {
        "version": 1,
        "lock": "agent",
        "pledge": "stdio rpath wpath cpath fattr unveil",
        "unveil": {str(box.x): "rwc"},
    }
    r = sandboxed(box, [*prog(body), str(box.x / "sub"), str(other)], promises=None, policy=policy)
    got = assert_clean(r)
    assert got == {
        "inside": "ok",
        "other": "EACCES",
        "new_inside": oct(0o755 & ~0o022),
        "new_other": "EACCES",
        "after": "ok",
    }, got
    assert stat.S_IMODE(other.stat().st_mode) == 0o600


def test_brought_files_cannot_be_changed(box: Box) -> None:
    """/dev/null is unveiled 'rw' by stdio to be written, not to have its mode, owner or
    times changed: chmod of it (by name, or through the agent's own stdin, a descriptor of
    it) is refused, and the host's /dev/null is untouched. A policy that unveils a path
    itself with 'w' is what the attribute calls look at."""
    before = os.stat("/dev/null")
    # 0666, /dev/null's own mode: were the call performed, the host would lose nothing.
    body = """
    same = 0o666
    report(name=raw(90, ptr(b"/dev/null"), same), stdin=raw(90, ptr(b"/proc/self/fd/0"), same),
           times=raw(280, -100, ptr(b"/dev/null"), 0, 0))
    """
    with open("/dev/null", "rb") as stdin:
        r = sandboxed(box, prog(body), promises=PROMISES, stdin=stdin)
    got = assert_clean(r)
    assert got == {"name": "EACCES", "stdin": "EACCES", "times": "EACCES"}, show(r)
    assert [o["decision"] for o in r.ops] == ["deny"] * 3, r.ops
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_mode,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )


def test_as_an_ordinary_user(tmp_path: Path) -> None:
    """The same for an unprivileged launcher (the test user, through tests/progs/asuser.py):
    the performer takes that user's ids, chmod inside the unveil is performed with setuid
    stripped, a file of the user's outside it is refused (and changeable directly)."""
    from progs.asuser import as_user

    u = as_user(tmp_path)
    inside = u.write("tree/mine.txt", "x", mode=0o600)
    outside = u.write("elsewhere.txt", "x", mode=0o600)
    body = "report(inside=call('chmod', sys.argv[1]), outside=call('chmod', sys.argv[2]))"
    cmd = [*prog(body), str(inside), str(outside)]
    direct = u.run(cmd)
    assert results(direct.stdout) == {"inside": "ok", "outside": "ok"}, direct
    inside.chmod(0o600)
    outside.chmod(0o600)
    r = u.sandbox(cmd, promises=PROMISES, unveil=[f"{inside.parent}:rwc"])
    assert r.status == 0 and results(r.stdout) == {"inside": "ok", "outside": "EACCES"}, r
    assert stat.S_IMODE(inside.stat().st_mode) == 0o640
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    setuid = "report(r=raw(90, ptr(os.fsencode(sys.argv[1])), 0o4755))"
    r2 = u.sandbox([*prog(setuid), str(inside)], promises=PROMISES, unveil=[f"{inside.parent}:rwc"])
    assert results(r2.stdout) == {"r": 0} and stat.S_IMODE(inside.stat().st_mode) == 0o755, r2
