"""The promise table on the real kernel (both sides of every promise), and the pure
functions around it: rules_for, promise_for, match, decode_args, describe."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from test_seccomp import Outcome, raw, run_filtered

from sandbox.enforce import promises as P
from sandbox.enforce import syscalls as S
from sandbox.enforce.rules import SELF_PID, Rule, match

AT_FDCWD = -100 & 0xFFFFFFFFFFFFFFFF


def cstr(s: str) -> int:
    buf = ctypes.create_string_buffer(s.encode())
    _keep.append(buf)
    return ctypes.addressof(buf)


_keep: list[Any] = []


@dataclass
class Case:
    """`call` is allowed under stdio + `needs`, and refused under stdio + `without`."""

    promise: str
    call: Callable[[], int]
    needs: frozenset[str]
    without: frozenset[str] = frozenset({"stdio"})
    setup: Callable[[], Any] | None = None
    ok: Callable[[int], bool] = field(default=lambda r: r >= 0)


STATE: dict[str, Any] = {}


def _tmpdir() -> str:
    d: str = STATE["dir"]
    return d


def _mkfile() -> None:
    path = os.path.join(_tmpdir(), "f")
    with open(path, "w") as f:
        f.write("data")
    STATE["file"] = path
    STATE["fd"] = os.open(path, os.O_RDWR)
    STATE["pty"] = os.openpty()
    STATE["pair"] = socket.socketpair()


def _open(flags: int, name: str = "f") -> Callable[[], int]:
    return lambda: raw("openat", AT_FDCWD, cstr(os.path.join(_tmpdir(), name)), flags, 0o600)


def _fork() -> int:
    r = raw("fork")
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    return r


def _thread() -> int:
    t = threading.Thread(target=lambda: None)
    try:
        t.start()
    except RuntimeError:
        return -errno.EPERM
    t.join()
    return 0


def _sendmsg() -> int:
    msghdr = ctypes.create_string_buffer(56)  # struct msghdr, empty: sends nothing
    return raw("sendmsg", STATE["pair"][0].fileno(), ctypes.addressof(msghdr), 0)


def _udp() -> None:
    STATE["udp"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _multicast_loop() -> int:
    one = ctypes.c_int(1)
    return raw(
        "setsockopt",
        STATE["udp"].fileno(),
        socket.IPPROTO_IP,
        socket.IP_MULTICAST_LOOP,
        ctypes.addressof(one),
        4,
    )


def _winsize() -> int:
    buf = ctypes.create_string_buffer(8)
    return raw("ioctl", STATE["pty"][1], S.TIOCSWINSZ, ctypes.addressof(buf))


def _adjtimex_read() -> int:
    buf = ctypes.create_string_buffer(256)  # struct timex, modes = 0: read only
    return raw("adjtimex", ctypes.addressof(buf))


CASES = [
    Case("stdio", lambda: raw("getppid"), frozenset({"stdio"}), frozenset({"rpath"})),
    Case("rpath", _open(os.O_RDONLY), frozenset({"rpath"}), setup=_mkfile),
    Case(
        "wpath",
        _open(os.O_WRONLY | os.O_TRUNC),
        frozenset({"wpath"}),
        frozenset({"stdio", "rpath"}),
        setup=_mkfile,
    ),
    Case(
        "wpath",  # reflink: reaches the kernel (which may not support it here: EOPNOTSUPP)
        lambda: raw("ioctl", STATE["fd"], S.FICLONE, STATE["fd"]),
        frozenset({"wpath"}),
        frozenset({"stdio", "rpath"}),
        setup=_mkfile,
        ok=lambda r: r != -errno.EPERM,
    ),
    Case(
        "cpath",
        _open(os.O_WRONLY | os.O_CREAT, "new"),
        frozenset({"wpath", "cpath"}),
        frozenset({"stdio", "wpath"}),
        setup=_mkfile,
    ),
    Case(
        "cpath",
        lambda: raw("mkdir", cstr(os.path.join(_tmpdir(), "d")), 0o700),
        frozenset({"cpath"}),
    ),
    Case(
        "dpath",
        lambda: raw("mknodat", AT_FDCWD, cstr(os.path.join(_tmpdir(), "p")), S.S_IFIFO | 0o600, 0),
        frozenset({"dpath"}),
    ),
    Case(
        "tmppath",
        _open(os.O_RDWR | os.O_CREAT, "t"),
        frozenset({"tmppath"}),
        frozenset({"stdio", "rpath"}),
    ),
    Case("flock", lambda: raw("flock", STATE["fd"], 2), frozenset({"flock"}), setup=_mkfile),
    Case("fattr", lambda: raw("fchmod", STATE["fd"], 0o600), frozenset({"fattr"}), setup=_mkfile),
    Case(
        "chown",
        lambda: raw("fchown", STATE["fd"], 0xFFFFFFFF, 0xFFFFFFFF),
        frozenset({"chown"}),
        setup=_mkfile,
    ),
    Case(
        "inet",
        lambda: raw("socket", S.AF_INET, S.SOCK_STREAM | S.SOCK_CLOEXEC, 0),
        frozenset({"inet"}),
    ),
    Case("mcast", _multicast_loop, frozenset({"inet", "mcast"}), frozenset({"inet"}), setup=_udp),
    Case("unix", lambda: raw("socket", S.AF_UNIX, S.SOCK_STREAM, 0), frozenset({"unix"})),
    Case("dns", lambda: raw("socket", S.AF_INET6, S.SOCK_DGRAM, 0), frozenset({"dns"})),
    Case("sendfd", _sendmsg, frozenset({"sendfd"}), frozenset({"rpath"}), setup=_mkfile),
    Case(
        "recvfd",
        lambda: raw("recvmsg", STATE["pair"][1].fileno(), 0, 0x40),
        frozenset({"recvfd"}),
        frozenset({"rpath"}),
        setup=_mkfile,
        ok=lambda r: r != -errno.EPERM,
    ),
    Case("proc", _fork, frozenset({"proc"})),
    Case("thread", _thread, frozenset({"thread"})),
    Case(
        "exec", lambda: raw("execve", 0, 0, 0), frozenset({"exec"}), ok=lambda r: r == -errno.EFAULT
    ),
    Case(
        "prot_exec",
        lambda: raw(
            "mmap", 0, 4096, S.PROT_READ | S.PROT_EXEC, S.MAP_PRIVATE | S.MAP_ANONYMOUS, -1, 0
        ),
        frozenset({"prot_exec"}),
    ),
    Case(
        "jit",
        lambda: raw(
            "mmap",
            0,
            4096,
            S.PROT_READ | S.PROT_WRITE | S.PROT_EXEC,
            S.MAP_PRIVATE | S.MAP_ANONYMOUS,
            -1,
            0,
        ),
        frozenset({"jit"}),
        frozenset({"stdio", "prot_exec"}),
    ),
    Case("id", lambda: raw("setuid", os.getuid()), frozenset({"id"})),
    Case("tty", _winsize, frozenset({"tty"}), setup=_mkfile),
    Case("settime", _adjtimex_read, frozenset({"settime"})),
    Case(
        "vminfo",
        lambda: raw("sysinfo", ctypes.addressof(STATE["si"])),
        frozenset({"vminfo"}),
        frozenset({"rpath"}),
        setup=lambda: STATE.update(si=ctypes.create_string_buffer(256)),
    ),
    Case("ps", lambda: raw("getpriority", 0, 1), frozenset({"ps"}), ok=lambda r: r != -errno.EPERM),
    Case("unveil", lambda: raw("landlock_create_ruleset", 0, 0, 1), frozenset({"unveil"})),
]


def _with_stdio(promises: frozenset[str], case: Case) -> set[str]:
    # the 'stdio' side case pledges without stdio on purpose: the child reports on fd 3
    return set(promises) | ({"stdio"} if case.promise != "stdio" else set())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.promise)
def test_promise_allows_its_calls(case: Case, tmp_path: Any) -> None:
    STATE["dir"] = str(tmp_path)
    out = run_filtered(case.call, _with_stdio(case.needs, case), setup=case.setup)
    assert out.signal is None and out.exitcode == 0, out
    assert case.ok(out.result), out.result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.promise)
def test_promise_is_needed(case: Case, tmp_path: Any) -> None:
    STATE["dir"] = str(tmp_path)
    out = run_filtered(case.call, set(case.without), setup=case.setup)
    assert out.signal is None and out.exitcode == 0, out
    assert out.result == -errno.EPERM
    # kill mode: the same call ends the process with SIGSYS
    out = run_filtered(case.call, set(case.without), setup=case.setup, violation="kill")
    assert out.signal == signal.SIGSYS, out


def test_every_promise_has_a_kernel_case() -> None:
    without_syscalls = {"getpw"}  # a path matter only (IMPLIED_UNVEILS)
    assert {c.promise for c in CASES} | without_syscalls == set(P.PROMISE_NAMES)
    # Only the nscd fallback: socket(AF_UNIX, SOCK_STREAM) fails with ENOSYS.
    extra = [r for r in P.rules_for({"getpw"}) if r not in P.rules_for(set())]
    assert [(r.syscall, r.action) for r in extra] == [("socket", "enosys")]
    assert ("/etc/passwd", "r") in P.IMPLIED_UNVEILS["getpw"]


# --- argument conditions ----------------------------------------------------------------------


def _run(call: Callable[[], int], promises: set[str], **kw: Any) -> Outcome:
    return run_filtered(call, promises, **kw)


def test_rpath_refuses_write_opens(tmp_path: Any) -> None:
    STATE["dir"] = str(tmp_path)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_RDONLY | os.O_CREAT):
        out = _run(_open(flags), {"stdio", "rpath"}, setup=_mkfile)
        assert out.result == -errno.EPERM, flags
    # O_TMPFILE needs cpath+wpath; O_DIRECTORY alone (part of O_TMPFILE's value) is a read
    out = _run(_open(os.O_RDONLY | os.O_DIRECTORY, ""), {"stdio", "rpath"}, setup=_mkfile)
    assert out.result >= 0
    out = _run(_open(os.O_WRONLY | os.O_TMPFILE, ""), {"stdio", "rpath", "wpath"})
    assert out.result == -errno.EPERM
    out = _run(_open(os.O_WRONLY | os.O_TMPFILE, ""), {"stdio", "wpath", "cpath"})
    assert out.result >= 0


def test_wpath_truncates_but_does_not_create(tmp_path: Any) -> None:
    STATE["dir"] = str(tmp_path)
    out = _run(_open(os.O_WRONLY | os.O_TRUNC), {"stdio", "wpath"}, setup=_mkfile)
    assert out.result >= 0
    assert os.path.getsize(tmp_path / "f") == 0
    out = _run(_open(os.O_WRONLY | os.O_CREAT, "new"), {"stdio", "wpath"})
    assert out.result == -errno.EPERM and not (tmp_path / "new").exists()
    # O_RDWR needs rpath as well
    assert _run(_open(os.O_RDWR), {"stdio", "wpath"}, setup=_mkfile).result == -errno.EPERM
    assert _run(_open(os.O_RDWR), {"stdio", "wpath", "rpath"}, setup=_mkfile).result >= 0


def test_dpath_only_fifos(tmp_path: Any) -> None:
    STATE["dir"] = str(tmp_path)
    path = str(tmp_path / "r")
    out = _run(
        lambda: raw("mknodat", AT_FDCWD, cstr(path), S.S_IFREG | 0o600, 0), {"stdio", "dpath"}
    )
    assert out.result == -errno.EPERM


def _mmap(prot: int, flags: int, fd: int = -1) -> Callable[[], int]:
    return lambda: raw("mmap", 0, 4096, prot, flags, fd, 0)


ANON = S.MAP_PRIVATE | S.MAP_ANONYMOUS
RWX = S.PROT_READ | S.PROT_WRITE | S.PROT_EXEC
RX = S.PROT_READ | S.PROT_EXEC


def test_w_xor_x() -> None:
    stdio = {"stdio"}
    jit = {"stdio", "prot_exec"}
    assert _run(_mmap(S.PROT_READ | S.PROT_WRITE, ANON), stdio).result > 0
    assert _run(_mmap(RWX, ANON), stdio).result == -errno.EPERM
    assert _run(_mmap(RX, ANON), stdio).result == -errno.EPERM
    assert _run(_mmap(RX, ANON), jit).result > 0
    assert _run(_mmap(RWX, ANON), jit).result == -errno.EPERM  # never W and X at once
    # file-backed read+exec (ld.so maps libraries so); writable+exec file mappings refused
    lib: dict[str, int] = {}
    setup = lambda: lib.update(fd=os.open("/bin/ls", os.O_RDONLY))  # noqa: E731
    assert _run(lambda: _mmap(RX, S.MAP_PRIVATE, lib["fd"])(), stdio, setup=setup).result > 0
    out = _run(lambda: _mmap(RWX, S.MAP_PRIVATE, lib["fd"])(), stdio, setup=setup)
    assert out.result == -errno.EPERM


def test_mprotect_to_exec() -> None:
    def flip(prot: int) -> Callable[[], int]:
        def go() -> int:
            addr = raw("mmap", 0, 4096, S.PROT_READ | S.PROT_WRITE, ANON, -1, 0)
            return raw("mprotect", addr, 4096, prot)

        return go

    assert _run(flip(S.PROT_READ), {"stdio"}).result == 0
    assert _run(flip(RX), {"stdio"}).result == -errno.EPERM
    assert _run(flip(RX), {"stdio", "prot_exec"}).result == 0
    assert _run(flip(RWX), {"stdio", "prot_exec"}).result == -errno.EPERM


def test_memfd_create_needs_noexec_seal() -> None:
    name = ctypes.create_string_buffer(b"m")

    def memfd(flags: int) -> Callable[[], int]:
        return lambda: raw("memfd_create", ctypes.addressof(name), flags)

    jit = {"stdio", "prot_exec"}
    assert _run(memfd(S.MFD_CLOEXEC | S.MFD_NOEXEC_SEAL), jit).result >= 0
    assert _run(memfd(S.MFD_CLOEXEC), jit).result == -errno.EPERM
    assert _run(memfd(S.MFD_EXEC), jit).result == -errno.EPERM
    # a sealed memfd can still be written and mapped executable: so not in stdio
    assert _run(memfd(S.MFD_NOEXEC_SEAL), {"stdio"}).result == -errno.EPERM


def test_clone_namespaces_refused_even_with_proc() -> None:
    def clone(flags: int) -> Callable[[], int]:
        def go() -> int:
            r = raw("clone", flags | signal.SIGCHLD, 0, 0, 0, 0)
            if r == 0:
                os._exit(0)
            if r > 0:
                os.waitpid(r, 0)
            return r

        return go

    everything = {"stdio", "proc", "thread"}
    assert _run(clone(0), everything).result > 0
    for ns in (S.CLONE_NEWUSER, S.CLONE_NEWNS, S.CLONE_NEWPID, S.CLONE_NEWNET, S.CLONE_PARENT):
        assert _run(clone(ns), everything).result == -errno.EPERM, hex(ns)
    assert _run(clone(S.CLONE_NEWUSER), everything, violation="kill").signal == signal.SIGSYS
    # control: the same call without a filter creates the namespace (we run as root)
    assert run_filtered(clone(S.CLONE_NEWUSER), [], unfiltered=True).result > 0


def test_kill_self_without_proc_others_need_proc() -> None:
    parent = os.getpid()
    assert _run(lambda: raw("kill", os.getpid(), 0), {"stdio"}).result == 0
    assert _run(lambda: raw("kill", parent, 0), {"stdio"}).result == -errno.EPERM
    assert _run(lambda: raw("kill", parent, 0), {"stdio", "proc"}).result == 0
    assert _run(lambda: raw("tgkill", os.getpid(), os.getpid(), 0), {"stdio"}).result == 0


def test_sendto_with_address_needs_a_network_promise() -> None:
    pair: list[socket.socket] = []

    def send(addr: int) -> Callable[[], int]:
        return lambda: raw("sendto", pair[0].fileno(), cstr("x"), 1, 0, addr, 0)

    setup = lambda: pair.extend(socket.socketpair())  # noqa: E731
    assert _run(send(0), {"stdio"}, setup=setup).result == 1
    assert _run(send(cstr("dummy")), {"stdio"}, setup=setup).result == -errno.EPERM
    assert _run(send(cstr("dummy")), {"stdio", "unix"}, setup=setup).result != -errno.EPERM


def test_socket_kinds() -> None:
    inet = {"stdio", "inet"}
    assert _run(lambda: raw("socket", S.AF_INET, S.SOCK_RAW, 1), inet).result == -errno.EPERM
    assert _run(lambda: raw("socket", 17, S.SOCK_RAW, 0), inet).result == -errno.EPERM  # packet
    assert _run(lambda: raw("socket", S.AF_NETLINK, S.SOCK_RAW, 0), inet).result == -errno.ENOSYS
    assert _run(lambda: raw("socket", S.AF_UNIX, S.SOCK_STREAM, 0), inet).result == -errno.EPERM


def test_prlimit_read_only_and_ioctl_subset() -> None:
    buf = ctypes.create_string_buffer(16)
    read = lambda: raw("prlimit64", 0, 7, 0, ctypes.addressof(buf))  # noqa: E731
    write = lambda: raw("prlimit64", 0, 7, ctypes.addressof(buf), 0)  # noqa: E731
    assert _run(read, {"stdio"}).result == 0
    assert _run(write, {"stdio"}).result == -errno.EPERM
    fds: list[int] = []
    fionread = lambda: raw("ioctl", fds[0], S.FIONREAD, ctypes.addressof(buf))  # noqa: E731
    assert _run(fionread, {"stdio"}, setup=lambda: fds.extend(os.pipe())).result == 0


# --- pure functions ---------------------------------------------------------------------------


def test_promise_names() -> None:
    expected = set(
        [
            "stdio",
            "rpath",
            "wpath",
            "cpath",
            "dpath",
            "tmppath",
            "flock",
            "fattr",
            "chown",
            "inet",
            "unix",
            "dns",
            "sendfd",
            "recvfd",
            "proc",
            "thread",
            "exec",
            "prot_exec",
            "id",
            "tty",
            "getpw",
            "settime",
            "vminfo",
            "ps",
        ]
    )
    assert expected <= P.PROMISE_NAMES
    # Additions: unveil (OpenBSD asks for it after pledge), jit and mcast (SPEC section 5).
    assert P.PROMISE_NAMES - expected == {"unveil", "jit", "mcast"}


def test_rules_for() -> None:
    with pytest.raises(ValueError, match="bogus"):
        P.rules_for({"bogus"})
    base = P.rules_for(set())
    assert base == list(P.ALWAYS)
    cw = P.rules_for({"cpath", "wpath"})
    c = P.rules_for({"cpath"})
    create_write = [r for r in cw if r.syscall == "openat" and r.also == {"wpath"}]
    assert create_write and not any(r in c for r in create_write)


def test_promise_for() -> None:
    assert P.promise_for("openat", [AT_FDCWD, 0, os.O_RDONLY, 0]) == "rpath"
    assert P.promise_for("openat", [AT_FDCWD, 0, os.O_WRONLY | os.O_TRUNC, 0]) == "wpath"
    # the narrow promises are named before tmppath, which also allows these
    assert P.promise_for("openat", [AT_FDCWD, 0, os.O_WRONLY | os.O_CREAT, 0]) == "wpath cpath"
    assert P.promise_for("openat", [AT_FDCWD, 0, os.O_RDWR | os.O_CREAT, 0]) == (
        "rpath wpath cpath"
    )
    # only what is missing beyond what the caller holds
    flags = os.O_RDWR | os.O_CREAT
    assert P.promise_for("openat", [AT_FDCWD, 0, flags, 0], have={"rpath", "wpath"}) == "cpath"
    assert P.promise_for("socket", [S.AF_INET, S.SOCK_STREAM, 0]) == "inet"
    assert P.promise_for("socket", [S.AF_INET, S.SOCK_RAW, 0]) is None
    assert P.promise_for("clone", [S.CLONE_NEWUSER | 17, 0, 0, 0, 0, 0]) is None
    assert P.promise_for("clone", [17, 0, 0, 0, 0, 0]) == "proc"
    assert P.promise_for("mmap", [0, 4096, RX, ANON, -1, 0]) == "prot_exec"
    # writable and executable at once: only the (extra) promise jit allows it (issue 9)
    assert P.promise_for("mmap", [0, 4096, RWX, ANON, -1, 0]) == "jit"
    assert P.promise_for("ptrace", [0] * 6) is None
    assert P.promise_for("ioctl", [0, S.TIOCSTI, 0]) is None
    assert P.promise_for("ioctl", [0, S.TCSETS, 0]) == "tty"
    assert P.promise_for("kill", [1234, 9]) == "proc"
    assert P.promise_for("kill", [1234, 9], self_pid=1234) == "stdio"
    assert P.promise_for("getppid", []) == "stdio"
    assert P.promise_for("connect", [3, 0, 16]) == "inet"
    assert P.promise_for("execve", [0, 0, 0]) == "exec"
    assert P.promise_for("no_such_call", []) is None


def test_match_precedence() -> None:
    rules = P.rules_for({"stdio", "dns"})
    r = match(rules, "sendto", [3, 0, 1, 0, 0, 0])
    assert r is not None and r.action == "allow"
    r = match(rules, "sendto", [3, 0, 1, 0, 0x1000, 16])
    assert r is not None and r.action == "notify" and r.handler == "dns"
    assert match(rules, "bind", [3, 0, 16]) is None
    kill = Rule("kill", (P.Arg(0, "eq", SELF_PID),))
    assert match([kill], "kill", [7, 9], self_pid=7) == kill
    assert match([kill], "kill", [8, 9], self_pid=7) is None


def test_decode_args() -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    assert S.decode_args("openat", [AT_FDCWD, 0x7FF0, flags, 0o644]) == (
        "openat(AT_FDCWD, 0x7ff0, O_WRONLY|O_CREAT|O_TRUNC, 0644)"
    )
    assert S.decode_args("socket", [S.AF_INET, S.SOCK_STREAM | S.SOCK_CLOEXEC, 0]) == (
        "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"
    )
    assert S.decode_args("mmap", [0, 4096, RWX, ANON, 0xFFFFFFFFFFFFFFFF, 0]) == (
        "mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0x0)"
    )
    # the low byte of clone's flags is the exit signal (0x11: SIGCHLD)
    assert S.decode_args("clone", [S.CLONE_NEWUSER | 0x11, 0, 0, 0, 0]) == (
        "clone(CLONE_NEWUSER|SIGCHLD, NULL, NULL, NULL, NULL)"
    )
    assert S.decode_args("ioctl", [1, S.TIOCSTI, 0]) == "ioctl(1, TIOCSTI, 0x0)"
    assert S.decode_args("frobnicate", [1, 2]) == "frobnicate(0x1, 0x2)"
    assert (
        S.decode_args("openat", [AT_FDCWD, 0, os.O_RDONLY | os.O_TMPFILE, 0]).count("O_TMPFILE")
        == 1
    )


def test_read_path_from_a_live_process() -> None:
    buf = ctypes.create_string_buffer(b"/etc/hostname")
    assert S.read_path(os.getpid(), ctypes.addressof(buf)) == "/etc/hostname"
    assert S.decode_args("open", [ctypes.addressof(buf), 0, 0], pid=os.getpid()) == (
        'open("/etc/hostname", O_RDONLY, 00)'
    )
    assert S.read_path(os.getpid(), 0) is None
    assert S.read_path(2**31 + 5, 0x1000) is None  # no such process


def test_describe_and_format() -> None:
    table = P.describe()
    names = [e["promise"] for e in table]
    assert set(P.PROMISE_NAMES) <= set(names) and "(never)" in names
    rpath = next(e for e in table if e["promise"] == "rpath")
    assert any("O_ACCMODE" in s and "O_CREAT" in s for s in rpath["syscalls"])  # type: ignore[attr-defined]
    text = P.format_table()
    assert "prot_exec:" in text and "TIOCSTI" in text and "io_uring_setup" in text
    assert "PROT_WRITE|PROT_EXEC) == PROT_EXEC" in text
    assert json.loads(P.format_json()) == json.loads(json.dumps(table))


def test_table_is_consistent() -> None:
    import sandbox.enforce.seccomp as sc

    for p in P.PROMISES.values():
        for r in p.rules:
            assert r.syscall not in P.NEVER, r
            assert r.also <= P.PROMISE_NAMES
            assert len({a.index for a in r.args}) == len(r.args), r
            assert sc.syscall_number(r.syscall) is not None or r.syscall in sc.OPTIONAL_SYSCALLS
    # every promise set compiles (the compiler's disjointness checks hold)
    for name in P.PROMISE_NAMES:
        sc.build_filter(P.rules_for({name, "stdio"}), violation="notify", self_pid=1)
    sc.build_filter(P.rules_for(P.PROMISE_NAMES), violation="kill", self_pid=1)
