"""Issue 9, the messages part, on real processes under real filters:

- every refusal names its fix (hints: getpw for glibc's nscd probe and passwd, dns for the
  resolver's files, thread for a thread's clone3, tty for /dev/tty, unix for a unix address);
- messages read like the call that was made (each call's real signature, flags, signals and
  ioctl requests by name, the strings, socket addresses and structs behind pointers);
- the clone ioctls (FICLONE and friends) under wpath: plain cp, and a real reflink;
- the promise jit: node with its JIT under jit, refused without it naming jit;
- never-allowed calls fail with EPERM under violation errno and log (never performed), and
  kill only under kill;
- SIGTERM/SIGINT/SIGHUP to the launcher reach the agent, whose exit is the launcher's.

Each shows both sides, and the same program works without the sandbox.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import textwrap
from collections.abc import Iterator, Sequence
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
    direct,
    make_box,
    ok_direct,
    results,
    sandboxed,
    show,
)
from test_seccomp import raw, run_filtered

from sandbox.enforce import promises as P
from sandbox.enforce import seccomp as sc
from sandbox.enforce import syscalls as S
from sandbox.testing import Result, assert_denied, run_sandboxed

GUARD = 60.0  # seconds: a guard against a hung run, never a timing assertion
AT_FDCWD = -100 & 0xFFFFFFFFFFFFFFFF
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, loop devices)")


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


def _pol(pledge: str, **extra: Any) -> dict[str, Any]:
    """A policy for kit.sandboxed (which adds the interpreter's paths to its unveil)."""
    return {"version": 1, "pledge": pledge, **extra}


def _stderr_line(r: Result) -> str:
    lines = [ln for ln in r.stderr.splitlines() if "pledge violation:" in ln]
    assert len(lines) == 1, show(r)
    return lines[0]


# --------------------------------------------------------------------------- hints


NSCD = """
import pwd
report(user=pwd.getpwuid(0).pw_name)
"""


def test_nscd_probe_names_getpw_not_unix(box: Box) -> None:
    """glibc's first step of a user lookup is nscd's unix socket: the message says 'getpw'
    (and that host names need 'dns'), not 'unix'."""
    assert ok_direct(agent(NSCD)) == {"user": "root"}
    r = sandboxed(box, agent(NSCD), promises="stdio rpath")
    rec = assert_killed(r, "socket", "getpw")
    assert rec["args"] == "AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0"
    assert "'dns' for host names" in rec["note"]
    assert _stderr_line(r).endswith(
        "socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0) needs 'getpw' "
        "(glibc asking nscd: 'getpw' for users and groups, 'dns' for host names)"
    ), show(r)
    # The fix named works: getpw brings passwd and group, and fails nscd's socket quietly.
    assert assert_clean(sandboxed(box, agent(NSCD), promises="stdio rpath getpw")) == {
        "user": "root"
    }


HOSTS = """
import socket
report(addr=socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
"""


def test_name_lookup_probe_names_dns(box: Box) -> None:
    assert ok_direct(agent(HOSTS)) == {"addr": "127.0.0.1"}
    r = sandboxed(box, agent(HOSTS), promises="stdio rpath")
    rec = assert_killed(r, "socket", "getpw")
    assert "'dns' for host names" in rec["note"], rec
    got = assert_clean(sandboxed(box, agent(HOSTS), promises="stdio rpath dns"))
    assert got == {"addr": "127.0.0.1"}


THREAD = """
import threading
t = threading.Thread(target=lambda: None)
t.start()
t.join()
report(thread="ok")
"""


def test_thread_clone3_names_thread_with_its_flags(box: Box) -> None:
    """pthread_create's clone3 keeps its flags in a struct: the parent reads it (for the
    message only) and names 'thread', showing the flags."""
    assert ok_direct(agent(THREAD)) == {"thread": "ok"}
    r = sandboxed(box, agent(THREAD), promises="stdio rpath")
    rec = assert_killed(r, "clone3", "thread")
    assert re.fullmatch(
        r"\{flags=CLONE_VM\|CLONE_FS\|CLONE_FILES\|CLONE_SIGHAND\|CLONE_THREAD\|"
        r"CLONE_SYSVSEM\|CLONE_SETTLS\|CLONE_PARENT_SETTID\|CLONE_CHILD_CLEARTID, "
        r"stack=0x[0-9a-f]+, stack_size=\d+, tls=0x[0-9a-f]+\}, 88",
        rec["args"],
    ), rec
    assert assert_clean(sandboxed(box, agent(THREAD), promises="stdio rpath thread")) == {
        "thread": "ok"
    }


FORK3 = """
# clone3 without thread flags (a process, as posix_spawn makes them): 'proc'
args = (ctypes.c_uint64 * 11)(0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)   # exit_signal SIGCHLD
pid = raw(435, ctypes.addressof(args), 88)
if pid == 0:
    os._exit(0)
if isinstance(pid, int):
    os.waitpid(pid, 0)
report(clone3="ok" if isinstance(pid, int) else pid)
"""


def test_process_clone3_names_proc(box: Box) -> None:
    assert ok_direct(agent(FORK3)) == {"clone3": "ok"}
    r = sandboxed(box, agent(FORK3), promises="stdio rpath")
    rec = assert_killed(r, "clone3", "proc")
    assert rec["args"] == "{flags=0, exit_signal=SIGCHLD}, 88", rec
    # with proc, clone3 fails with ENOSYS (its flags are in a struct the filter cannot read)
    assert assert_clean(sandboxed(box, agent(FORK3), promises="stdio rpath proc")) == {
        "clone3": "ENOSYS"
    }


def _lock_agent(tmp_path: Path, pledge: str, body: str, policy_pledge: str) -> Result:
    """A Python agent that pledges `pledge` itself (lock: agent), then runs `body`."""
    script = tmp_path / "agent.py"
    script.write_text(
        f"import os, sys\nimport sandbox\nsandbox.pledge({pledge!r})\n" + textwrap.dedent(body)
    )
    policy = {
        "version": 1,
        "name": "agent",
        "command": [PY, str(script)],
        "lock": "agent",
        "pledge": policy_pledge,
        "unveil": {"@python": "rx", "@system": "rx"},
    }
    return run_sandboxed(policy=policy, workdir=tmp_path, timeout=GUARD)


READ_FILE = """
with open(PATH) as f:
    print("read", len(f.read()) > 0, flush=True)
"""


@pytest.mark.parametrize(
    ("path", "promise", "note"),
    [
        ("/etc/resolv.conf", "rpath dns", None),
        ("/etc/hosts", "rpath dns", None),
        ("/etc/passwd", "rpath getpw", None),
        ("/etc/nsswitch.conf", "rpath getpw", "or 'dns'"),
    ],
)
def test_files_a_promise_brings_name_it(
    tmp_path: Path, path: str, promise: str, note: str | None
) -> None:
    """Opening the resolver's files names 'dns', the user database 'getpw' (with what the
    filter still needs besides: rpath, until the promise brings its files by itself)."""
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this system")
    body = f"PATH = {path!r}\n" + READ_FILE
    r = _lock_agent(tmp_path, "stdio", body, f"stdio {promise}")
    assert r.status == 159, r
    rec = assert_denied(r, syscall="openat", promise=promise, action="kill")
    assert rec["args"].startswith(f'AT_FDCWD, "{path}", O_RDONLY|O_CLOEXEC'), rec
    assert rec.get("note") == note
    assert f"needs '{promise}'" in r.stderr
    # The promises named let the same agent read the file (the launcher unveils it for them).
    (tmp_path / "ok").mkdir()
    ok = sandboxed(make_box(tmp_path / "ok"), [PY, "-c", body], promises=f"stdio {promise}")
    assert (ok.status, ok.stdout) == (0, "read True\n"), show(ok)


TTY = """
report(tty=attempt(lambda: open("/dev/tty", "r+").close()))
"""


def test_dev_tty_names_tty_not_just_wpath(box: Box) -> None:
    r = sandboxed(box, agent(TTY), promises="stdio rpath")
    rec = assert_killed(r, "openat", "wpath tty")
    assert rec["args"].startswith('AT_FDCWD, "/dev/tty", O_RDWR|O_CLOEXEC'), rec


def _pty_popen(argv: Sequence[str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` as the session leader of a new pseudo-terminal, its controlling
    terminal (stdin, stdout and stderr); returns the process and the terminal's master."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_tty,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    os.close(slave)
    return proc, master


def _in_pty(argv: Sequence[str], *, cwd: Path) -> tuple[int, bytes]:
    """Run `argv` as the session leader of a new pseudo-terminal (its controlling terminal);
    return its exit status and everything it wrote to the terminal."""
    proc, master = _pty_popen(argv, cwd)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], GUARD)
            assert ready, f"no output from {argv} within {GUARD}s: {out!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal is gone
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=GUARD), out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_dev_tty_opens_with_tty(tmp_path: Path) -> None:
    """The other side: with the promises named and a controlling terminal, /dev/tty opens
    (the launcher unveils it for 'tty') and what the agent writes reaches the terminal."""
    code = 'import os; fd = os.open("/dev/tty", os.O_WRONLY); os.write(fd, b"via-dev-tty\\n")'
    status, out = _in_pty([PY, "-c", code], cwd=tmp_path)
    assert status == 0 and b"via-dev-tty" in out, out
    argv = [PY, "-m", "sandbox", "run", "-p", "stdio rpath wpath tty"]
    argv += ["-v", "@python:rx", "-v", "@system:rx", "--audit-log", str(tmp_path / "a.jsonl")]
    status, out = _in_pty([*argv, "--", PY, "-c", code], cwd=tmp_path)
    assert status == 0 and b"via-dev-tty" in out, out
    # ... and without 'tty' the same open is refused by Landlock (nothing unveils /dev/tty)
    argv[5] = "stdio rpath wpath"
    status, out = _in_pty([*argv, "--", PY, "-c", code], cwd=tmp_path)
    assert status == 1 and b"PermissionError" in out and b"via-dev-tty\r\n" not in out, out


UNIX_CONNECT = """
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
report(connect=attempt(s.connect, "/run/nothing-here.sock"))
"""


def test_unix_address_names_unix_not_inet(box: Box) -> None:
    """connect is a row of inet and of unix: the address behind the pointer says which."""
    body = "import socket\n" + UNIX_CONNECT
    assert ok_direct(agent(body)) == {"connect": "ENOENT"}
    # socketpair's sockets are stdio's; a socket made before the lock would do as well
    pair = body.replace(
        "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)", "socket.socketpair()[0]"
    )
    r = sandboxed(box, agent(pair), promises="stdio rpath")
    rec = assert_killed(r, "connect", "unix")
    assert re.fullmatch(r'\d+, \{AF_UNIX, "/run/nothing-here.sock"\}, \d+', rec["args"]), rec


def test_hints_are_data_read_by_promise_for() -> None:
    """The hints live in the promise module's table, and promise_for reads them; without
    the memory they need (no process), the rows decide."""
    assert {h.promise for h in P.HINTS} >= {"getpw", "dns", "thread", "proc", "tty", "unix"}
    nscd = [S.AF_UNIX, S.SOCK_STREAM | S.SOCK_CLOEXEC | S.SOCK_NONBLOCK, 0]
    assert P.promise_for("socket", nscd) == "getpw"
    assert P.promise_for("socket", nscd, have={"getpw"}) == "unix"  # then it is a real socket
    assert P.promise_for("socket", [S.AF_UNIX, S.SOCK_STREAM | S.SOCK_CLOEXEC, 0]) == "unix"
    assert P.promise_for("clone3", [0x1000, 88]) == "proc"  # struct unreadable: the rows
    args = (ctypes.c_uint64 * 11)(S.CLONE_VM | S.CLONE_THREAD | S.CLONE_SIGHAND)
    with S.Memory(os.getpid()) as mem:
        assert P.promise_for("clone3", [ctypes.addressof(args), 88], mem=mem) == "thread"
        assert P.promise_for("clone3", [ctypes.addressof(args), 88], have={"thread"}, mem=mem) == (
            "proc"
        )
    rwx = [0, 4096, 7, S.MAP_PRIVATE | S.MAP_ANONYMOUS, -1, 0]
    assert P.refusal("mmap", [0, 4096, 5, *rwx[3:]]) == P.Refusal(
        "prot_exec", "or 'jit' for a JIT compiler: node, the JVM, LuaJIT"
    )
    assert P.refusal("mmap", rwx) == P.Refusal("jit")
    assert P.refusal("bpf", [0, 0, 0]) == P.Refusal(None, "loads programs into the kernel")
    table = P.format_table()
    assert (
        "(hints)" in table and "clone_args.flags & CLONE_THREAD == CLONE_THREAD: 'thread'" in table
    )


# --------------------------------------------------------------------------- signatures


def test_the_table_covers_every_x86_64_call() -> None:
    """Every system call this architecture numbers has its real signature, at most six
    arguments, of kinds the formatter knows."""
    known = {
        "fd", "dirfd", "pid", "id", "int", "uint", "hex", "ptr", "path", "str", "mode", "fmode",
        "sig", "sockaddr", "argv", "msghdr", "openflags", "socktype", "cloneflags", "futex_op",
        "ioctl", *S.STRUCTS, *S.RECORDS,
    }  # fmt: skip
    names = {sc.syscall_name(nr) for nr in range(0, 470)}
    missing = sorted(n for n in names if not n.startswith("syscall_") and n not in S.SIGNATURES)
    assert missing == [], missing
    for name, kinds in S.SIGNATURES.items():
        assert len(kinds) <= 6, name
        for kind in kinds:
            assert kind in known or kind in S._FLAGS or kind in S._ENUMS, (name, kind)
    assert S.SIGNATURES["vfork"] == () and S.SIGNATURES["setresuid"] == ("id", "id", "id")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="reading the kernel's syscall descriptions needs root (tracefs)",
)
def test_the_table_is_what_the_kernel_describes(tmp_path: Path) -> None:
    """ci/gen_syscalls.py, run on this kernel's own descriptions (tracefs, mounted in a
    private mount namespace), produces exactly the committed table."""
    gen = ROOT / "ci" / "gen_syscalls.py"
    mnt = tmp_path / "tracefs"
    mnt.mkdir()
    script = f"mount -t tracefs nodev {mnt} && exec {PY} {gen} --tracefs {mnt} --print"
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=GUARD
    )
    if p.returncode != 0 and "tracefs" in p.stderr:
        pytest.skip(f"tracefs cannot be mounted here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    src = (ROOT / "sandbox" / "enforce" / "syscalls.py").read_text()
    assert p.stdout.strip() in src, "SIGNATURES differs from ci/gen_syscalls.py's output"


def _buf(data: bytes) -> int:
    b = ctypes.create_string_buffer(data, len(data))
    _KEEP.append(b)
    return ctypes.addressof(b)


_KEEP: list[Any] = []


def _sockaddr_in(ip: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack(">H", port)
        + socket.inet_aton(ip)
        + bytes(8)
    )


def test_decoding_by_signature_families() -> None:
    me = os.getpid()

    def d(name: str, *args: int) -> str:
        return S.decode_args(name, list(args), pid=me)

    # no arguments, and ids: the real count, not six registers
    assert d("vfork", 1, 2, 3, 4, 5, 6) == "vfork()"
    assert d("getpid", 7) == "getpid()"
    assert d("setresuid", 0, 0xFFFFFFFF, 1000, 9, 9, 9) == "setresuid(0, -1, 1000)"
    # flags, and clone's exit signal in its low byte
    assert d("clone", S.CLONE_VM | S.CLONE_VFORK | 17, 0, 0, 0, 0, 0) == (
        "clone(CLONE_VM|CLONE_VFORK|SIGCHLD, NULL, NULL, NULL, NULL)"
    )
    assert d("unshare", S.CLONE_NEWUSER | S.CLONE_NEWNS) == "unshare(CLONE_NEWNS|CLONE_NEWUSER)"
    assert d("access", _buf(b"/x\0"), 0) == 'access("/x", F_OK)'
    assert d("faccessat2", AT_FDCWD, _buf(b"y\0"), 6, 0x200) == (
        'faccessat2(AT_FDCWD, "y", R_OK|W_OK, AT_REMOVEDIR)'
    )
    assert d("mknodat", AT_FDCWD, _buf(b"p\0"), S.S_IFIFO | 0o600, 0) == (
        'mknodat(AT_FDCWD, "p", S_IFIFO|0600, 0)'
    )
    # signals, enumerations
    assert d("kill", 42, signal.SIGTERM) == "kill(42, SIGTERM)"
    assert d("tgkill", 1, 2, 0) == "tgkill(1, 2, 0)"
    assert d("lseek", 3, 10, 1) == "lseek(3, 10, SEEK_CUR)"
    assert d("prlimit64", 0, 7, 0, 0x1000) == "prlimit64(0, RLIMIT_NOFILE, NULL, 0x1000)"
    assert d("madvise", 0x7000, 4096, 4) == "madvise(0x7000, 4096, MADV_DONTNEED)"
    assert d("futex", 0x1000, 0x81, 1, 0, 0, 0) == (
        "futex(0x1000, FUTEX_WAKE|FUTEX_PRIVATE_FLAG, 1, NULL, NULL, 0)"
    )
    assert d("clock_gettime", 1, 0x10) == "clock_gettime(CLOCK_MONOTONIC, 0x10)"
    # ioctl requests by name, their argument where it is a descriptor, others by fields
    assert d("ioctl", 4, S.FICLONE, 3) == "ioctl(4, FICLONE, 3)"
    assert d("ioctl", 4, S.FICLONERANGE, 0x10) == "ioctl(4, FICLONERANGE, 0x10)"
    assert d("ioctl", 0, S.TIOCSTI, 0x10) == "ioctl(0, TIOCSTI, 0x10)"
    assert d("ioctl", 0, 0x80045431, 0) == "ioctl(0, _IOC(_IOC_READ, 0x54, 0x31, 0x4), 0x0)"
    # upper bits the filter sees (and refuses) are shown; the kernel would drop them
    assert d("ioctl", 0, 1 << 40 | S.FICLONE, 0) == f"ioctl(0, {hex(1 << 40 | S.FICLONE)}, 0)"
    assert d("fcntl", 3, S.F_DUPFD_CLOEXEC, 10) == "fcntl(3, F_DUPFD_CLOEXEC, 10)"
    assert d("fcntl", 3, S.F_SETFL, os.O_NONBLOCK) == "fcntl(3, F_SETFL, O_RDONLY|O_NONBLOCK)"
    assert d("prctl", 22, 2, 0, 0, 0) == "prctl(PR_SET_SECCOMP, 0x2, 0x0, 0x0, 0x0)"


def test_decoding_what_pointers_point_to() -> None:
    me = os.getpid()

    def d(name: str, *args: int) -> str:
        return S.decode_args(name, list(args), pid=me)

    # paths and strings, escaped (terminal escapes from the agent are never passed through)
    assert d("openat", AT_FDCWD, _buf(b'/tmp/a "b"\x1b[2J\0'), os.O_RDONLY, 0) == (
        'openat(AT_FDCWD, "/tmp/a \\"b\\"\\x1b[2J", O_RDONLY, 00)'
    )
    assert d("memfd_create", _buf(b"jit\0"), 1) == 'memfd_create("jit", MFD_CLOEXEC)'
    # socket addresses, with their length
    sin = _sockaddr_in("10.0.0.1", 443)
    assert d("connect", 3, _buf(sin), 16) == "connect(3, {AF_INET, 10.0.0.1:443}, 16)"
    sin6 = struct.pack("=H", socket.AF_INET6) + struct.pack(">H", 53) + bytes(4)
    sin6 += socket.inet_pton(socket.AF_INET6, "::1") + bytes(4)
    assert d("bind", 3, _buf(sin6), 28) == "bind(3, {AF_INET6, [::1]:53}, 28)"
    sun = struct.pack("=H", socket.AF_UNIX) + b"/run/x.sock\0"
    assert (
        d("connect", 3, _buf(sun), len(sun))
        == f'connect(3, {{AF_UNIX, "/run/x.sock"}}, {len(sun)})'
    )
    abstract = struct.pack("=H", socket.AF_UNIX) + b"\0bus"
    assert d("connect", 3, _buf(abstract), 6) == 'connect(3, {AF_UNIX, @"bus"}, 6)'
    nl = struct.pack("=HHII", socket.AF_NETLINK, 0, 0, 1)
    assert d("bind", 3, _buf(nl), 12) == "bind(3, {AF_NETLINK, pid=0, groups=0x1}, 12)"
    assert d("sendto", 3, 0x10, 5, 0, _buf(sin), 16) == (
        "sendto(3, 0x10, 5, 0x0, {AF_INET, 10.0.0.1:443}, 16)"
    )
    # a msghdr's destination
    name = _buf(_sockaddr_in("8.8.8.8", 53))
    msg = struct.pack("=QI4xQQQQi4x", name, 16, 0x1000, 1, 0, 0, 0)
    assert d("sendmsg", 3, _buf(msg), 0) == (
        "sendmsg(3, {msg_name={AF_INET, 8.8.8.8:53}, msg_iovlen=1, msg_controllen=0}, 0x0)"
    )
    # argv
    strings = [_buf(b"ls\0"), _buf(b"-l\0")]
    argv = _buf(struct.pack("=3Q", *strings, 0))
    assert d("execve", _buf(b"/bin/ls\0"), argv, 0x1234) == (
        'execve("/bin/ls", ["ls", "-l"], 0x1234)'
    )
    # structs behind a pointer, sized by the next argument
    ca = struct.pack(
        "=11Q", S.CLONE_VM | S.CLONE_THREAD | S.CLONE_SIGHAND, 0, 0, 0, 0, 0x7000, 8192, 0, 0, 0, 0
    )
    assert d("clone3", _buf(ca), 88) == (
        "clone3({flags=CLONE_VM|CLONE_SIGHAND|CLONE_THREAD, stack=0x7000, stack_size=8192}, 88)"
    )
    how = struct.pack("=3Q", os.O_RDONLY | os.O_CLOEXEC, 0, 0x08 | 0x04)
    assert d("openat2", AT_FDCWD, _buf(b"f\0"), _buf(how), 24) == (
        'openat2(AT_FDCWD, "f", {flags=O_RDONLY|O_CLOEXEC, '
        "resolve=RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH}, 24)"
    )
    # what cannot be read stays a pointer (never a guess), and so without a process
    assert d("openat", AT_FDCWD, 0x10, 0, 0) == "openat(AT_FDCWD, 0x10, O_RDONLY, 00)"
    assert d("connect", 3, 0x10, 16) == "connect(3, 0x10, 16)"
    addr = _buf(sin)
    assert S.decode_args("connect", [3, addr, 16]) == f"connect(3, {hex(addr)}, 16)"
    assert S.decode_args("connect", [3, addr, 200], pid=me) == f"connect(3, {hex(addr)}, 200)"


SIGNATURE_CALLS = """
nr, *args = [int(a, 0) for a in sys.argv[1:]]
report(called=raw(nr, *args))
"""


@pytest.mark.parametrize(
    ("call", "argv", "expected", "promise"),
    [
        ("vfork", ["58"], "vfork()", "proc"),
        # ids that change (setting the ids one has is a no-op the parent answers)
        ("setresuid", ["117", "1", "-1", "1"], "setresuid(1, -1, 1)", "id"),
        # no such process (never signal a real one: the control below runs unsandboxed)
        ("kill", ["62", "99999999", "15"], "kill(99999999, SIGTERM)", "proc"),
        ("ioctl", ["16", "1", str(S.FICLONE), "0"], "ioctl(1, FICLONE, 0)", "wpath"),
        ("bpf", ["321", "0", "0", "0"], "bpf(0, NULL, 0)", None),
    ],
    ids=lambda v: v if isinstance(v, str) and v.isidentifier() else None,
)
def test_messages_of_real_calls(
    box: Box, call: str, argv: list[str], expected: str, promise: str | None
) -> None:
    """The stderr line and the record show the call as it was made."""
    r = sandboxed(box, [*agent(SIGNATURE_CALLS), *argv], promises="stdio rpath")
    rec = assert_killed(r, call, promise)
    assert f"pledge violation: {expected} " in _stderr_line(r), show(r)
    assert rec["args"] == expected[len(call) + 1 : -1]


EXEC = """
os.execv("/bin/true", ["true", "--version"])
"""


def test_exec_message_shows_path_and_argv(box: Box) -> None:
    r = sandboxed(box, agent(EXEC), promises="stdio rpath")
    rec = assert_killed(r, "execve", "exec")
    assert re.fullmatch(r'"/bin/true", \["true", "--version"\], 0x[0-9a-f]+', rec["args"]), rec


# --------------------------------------------------------------------------- clone ioctls


def _cp_box(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "a.txt").write_bytes(os.urandom(100_000))
    return src, dst


CP_UNVEIL: tuple[str, ...] = ()  # kit adds @python and @system


def test_plain_cp_works_under_wpath(tmp_path: Path) -> None:
    """coreutils' cp tries FICLONE first (ext4 says EOPNOTSUPP, then it copies). Without the
    row it was killed as 'never allowed'."""
    box = make_box(tmp_path)
    src, dst = _cp_box(tmp_path)
    cmd = ["cp", str(src / "a.txt"), str(dst / "b.txt")]
    r = sandboxed(
        box,
        cmd,
        promises="stdio rpath wpath cpath",
        unveil=(*CP_UNVEIL, f"{src}:r", f"{dst}:rwc"),
    )
    assert r.status == 0 and not r.violations, show(r)
    assert (dst / "b.txt").read_bytes() == (src / "a.txt").read_bytes()
    # one promise less: refused, and the message names it
    (dst / "b.txt").unlink()
    r = sandboxed(
        box, cmd, promises="stdio rpath cpath", unveil=(*CP_UNVEIL, f"{src}:r", f"{dst}:rwc")
    )
    assert_killed(r, "openat", "wpath")
    assert not (dst / "b.txt").exists()


FICLONE_WITHOUT_WPATH = """
report(ficlone=attempt(lambda: fcntl.ioctl(1, FICLONE, 0)))
"""


def test_ficlone_needs_wpath(box: Box) -> None:
    """The request reaches the kernel without the sandbox (which refuses it: stdout is no
    file); under the sandbox without wpath it is refused before, naming wpath."""
    body = f"import fcntl\nFICLONE = {S.FICLONE}\n" + FICLONE_WITHOUT_WPATH
    assert ok_direct(agent(body))["ficlone"] in {"EBADF", "EINVAL", "EOPNOTSUPP", "EXDEV"}
    r = sandboxed(box, agent(body), promises=None, policy=_pol("stdio rpath", violation="errno"))
    assert assert_clean_errno(r) == {"ficlone": "EPERM"}
    rec = assert_denied(r, syscall="ioctl", promise="wpath", action="errno")
    assert rec["args"] == "1, FICLONE, 0"
    # with wpath the kernel decides (the same errno as without the sandbox)
    ok = sandboxed(box, agent(body), promises="stdio rpath wpath")
    assert assert_clean(ok)["ficlone"] == ok_direct(agent(body))["ficlone"]


def assert_clean_errno(r: Result) -> dict[str, Any]:
    assert r.status == 0, show(r)
    return results(r.stdout)


@pytest.fixture
def reflink_dir(tmp_path: Path) -> Iterator[Path]:
    """A mounted XFS with reflinks (a loop device over a sparse file): a filesystem where
    FICLONE really shares the data."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        pytest.skip("mkfs.xfs is missing (ci/setup installs xfsprogs)")
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    with open(img, "wb") as f:
        f.truncate(320 << 20)  # XFS's smallest size
    subprocess.run([mkfs, "-q", "-m", "reflink=1", str(img)], check=True, timeout=GUARD)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, timeout=GUARD)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=GUARD)


def test_cp_reflink_always_clones_under_the_sandbox(tmp_path: Path, reflink_dir: Path) -> None:
    """`cp --reflink=always` succeeds only if FICLONE does: it does under wpath."""
    src, dst = reflink_dir / "src", reflink_dir / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "a").write_bytes(os.urandom(1 << 20))
    cmd = ["cp", "--reflink=always", str(src / "a"), str(dst / "b")]
    box = make_box(tmp_path)
    r = sandboxed(
        box, cmd, promises="stdio rpath wpath cpath", unveil=(*CP_UNVEIL, f"{src}:r", f"{dst}:rwc")
    )
    assert r.status == 0 and not r.violations, show(r)
    assert (dst / "b").read_bytes() == (src / "a").read_bytes()
    # the control: on a filesystem without reflinks the same cp fails (so the clone above
    # really was one), sandboxed or not
    plain_src, plain_dst = _cp_box(tmp_path)
    p = direct(["cp", "--reflink=always", str(plain_src / "a.txt"), str(plain_dst / "b.txt")])
    if p.returncode == 0:
        pytest.skip(f"{tmp_path} supports reflinks too: no control here")
    assert "Operation not supported" in p.stderr or "Invalid" in p.stderr, p.stderr


# --------------------------------------------------------------------------- jit


NODE = "console.log([1, 2, 3].map((x) => x * 2).join(','))"
NODE_UNVEIL = ("/etc/ssl:r",)


def _node() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (ci/setup installs nodejs)")
    return node


def test_node_runs_its_jit_under_jit(box: Box) -> None:
    node = _node()
    assert direct([node, "-e", NODE]).stdout == "2,4,6\n"
    r = sandboxed(box, [node, "-e", NODE], promises="stdio rpath thread jit", unveil=NODE_UNVEIL)
    assert (r.status, r.stdout, r.violations) == (0, "2,4,6\n", []), show(r)


def test_node_without_jit_is_refused_naming_jit(box: Box) -> None:
    node = _node()
    r = sandboxed(box, [node, "-e", NODE], promises="stdio rpath thread", unveil=NODE_UNVEIL)
    assert r.status == 159 and "2,4,6" not in r.stdout, show(r)
    (v,) = r.violations
    assert v["syscall"] in ("mmap", "mprotect") and "'jit'" in (v["promise"] + v.get("note", ""))
    assert "jit" in _stderr_line(r)
    # even with prot_exec, V8's writable and executable pages need jit
    r = sandboxed(
        box, [node, "-e", NODE], promises="stdio rpath thread prot_exec", unveil=NODE_UNVEIL
    )
    rec = assert_killed(r, "mprotect", "jit")
    assert rec["args"].endswith("PROT_READ|PROT_WRITE|PROT_EXEC"), rec
    # and node --jitless needs neither
    r = sandboxed(
        box, [node, "--jitless", "-e", NODE], promises="stdio rpath thread", unveil=NODE_UNVEIL
    )
    assert (r.status, r.stdout) == (0, "2,4,6\n"), show(r)


WX = """
libc.mmap.restype = ctypes.c_void_p
c = ctypes
libc.mmap.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
a = libc.mmap(None, 4096, 7, 0x22, -1, 0)            # RWX, MAP_PRIVATE|MAP_ANONYMOUS
b = libc.mmap(None, 4096, 3, 0x22, -1, 0)
code = bytes([0xB8, 42, 0, 0, 0, 0xC3])              # mov eax, 42; ret
ctypes.memmove(a, code, len(code))
ok_b = libc.mprotect(b, 4096, 7) == 0                 # and mprotect to RWX
report(run=ctypes.CFUNCTYPE(ctypes.c_int)(a)(), mprotect=ok_b)
"""


def test_jit_allows_writable_executable_memory(box: Box) -> None:
    assert ok_direct(agent(WX)) == {"run": 42, "mprotect": True}
    assert assert_clean(sandboxed(box, agent(WX), promises="stdio rpath jit")) == {
        "run": 42,
        "mprotect": True,
    }
    r = sandboxed(box, agent(WX), promises="stdio rpath prot_exec")
    rec = assert_killed(r, "mmap", "jit")
    assert "PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS" in rec["args"]


def test_jit_is_described_honestly(tmp_path: Path) -> None:
    p = subprocess.run(
        [PY, "-m", "sandbox", "promises"], capture_output=True, text=True, timeout=GUARD
    )
    assert p.returncode == 0
    block = p.stdout[p.stdout.index("\njit: ") :].split("\n\n")[0]
    assert "writable and executable" in block and "weakens: W^X" in block, block
    pol = tmp_path / "j.yaml"
    pol.write_text("version: 1\npledge: stdio rpath jit\n")
    p = subprocess.run(
        [PY, "-m", "sandbox", "explain", str(pol)], capture_output=True, text=True, timeout=GUARD
    )
    assert p.returncode == 0, p.stderr
    assert re.search(r"^WEAKENS +jit: W\^X", p.stdout, re.M), p.stdout
    p = subprocess.run(
        [PY, "-m", "sandbox", "explain", str(pol), "--json"],
        capture_output=True,
        text=True,
        timeout=GUARD,
    )
    assert json.loads(p.stdout)["weakens"]["jit"].startswith("W^X")
    # without jit (and prot_exec) nothing is weakened
    pol.write_text("version: 1\npledge: stdio rpath\n")
    p = subprocess.run(
        [PY, "-m", "sandbox", "explain", str(pol)], capture_output=True, text=True, timeout=GUARD
    )
    assert "WEAKENS" not in p.stdout


# --------------------------------------------------------------------------- never allowed


NEVER_CALL = """
nr, args = int(sys.argv[1]), [int(a, 0) for a in sys.argv[2:]]
buf = ctypes.create_string_buffer(4096)
args = [ctypes.addressof(buf) if a == -4242 else a for a in args]
report(called=raw(nr, *args), after="still running")
"""


@pytest.mark.parametrize("mode", ["errno", "log"])
@pytest.mark.parametrize(
    ("syscall", "argv"),
    [("bpf", ["321", "0", "0", "0"]), ("io_uring_setup", ["425", "1", "-4242"])],
    ids=["bpf", "io_uring_setup"],
)
def test_never_allowed_fails_with_eperm_under_errno_and_log(
    box: Box, mode: str, syscall: str, argv: list[str]
) -> None:
    """Never performed, even in learning mode: EPERM, recorded, and the agent goes on."""
    cmd = [*agent(NEVER_CALL), *argv]
    unsandboxed = ok_direct(cmd)["called"]
    assert unsandboxed != "EPERM"  # the kernel performs it (io_uring: a ring fd)
    r = sandboxed(box, cmd, promises=None, policy=_pol("stdio rpath", violation=mode))
    assert r.status == 0, show(r)
    assert results(r.stdout) == {"called": "EPERM", "after": "still running"}
    rec = assert_denied(r, syscall=syscall, promise=None, action="errno")
    assert rec["note"] == P.NEVER[syscall]
    assert "pledge violation" not in r.stderr


def test_never_allowed_is_killed_under_kill(box: Box) -> None:
    cmd = [*agent(NEVER_CALL), "321", "0", "0", "0"]
    r = sandboxed(box, cmd, promises=None, policy=_pol("stdio rpath", violation="kill"))
    assert "called" not in results(r.stdout)
    rec = assert_killed(r, "bpf", None)
    assert rec["note"] == "loads programs into the kernel"


def test_never_allowed_under_a_kernel_only_filter() -> None:
    """Where no listener decides (library use, narrowed pledges, best_effort), the kernel
    applies the same rule: EPERM under errno and log, kill under kill."""
    for mode in ("errno", "log"):
        out = run_filtered(
            lambda: raw("bpf", 0, 0, 0),
            {"stdio"},
            violation=sc.KERNEL_ACTIONS[mode],
            never_action=sc.NEVER_KERNEL_ACTIONS[mode],
        )
        assert out.signal is None and out.result == -errno.EPERM, (mode, out)
    out = run_filtered(
        lambda: raw("bpf", 0, 0, 0),
        {"stdio"},
        violation="kill",
        never_action=sc.NEVER_KERNEL_ACTIONS["kill"],
    )
    assert out.killed_by_sigsys


# --------------------------------------------------------------------------- signals


WAITER = """
import os, signal, sys, time
def on_signal(sig, frame):
    os.write(1, f"agent got {signal.Signals(sig).name}\\n".encode())  # print is not reentrant
    if MODE == "exit":
        sys.exit(0)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    if MODE != "default":
        signal.signal(s, on_signal)
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.1)
print("timed out", flush=True)
"""


def _start(
    tmp_path: Path, mode: str, *, launcher: Sequence[str] | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """`sandbox run` (or `launcher`) of the waiting agent, once it has said 'ready'."""
    log = tmp_path / "audit.jsonl"
    code = f"MODE = {mode!r}\n" + WAITER
    argv = list(launcher) if launcher is not None else [
        PY, "-m", "sandbox", "run", "-p", "stdio rpath", "-v", "@python:rx", "-v", "@system:rx",
        "--audit-log", str(log), "--",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*argv, PY, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], GUARD)
    line = proc.stdout.readline() if ready else ""
    if line != "ready\n":
        proc.kill()
        raise AssertionError(f"the agent did not start: {line!r} {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc, log


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=GUARD)
    return proc.returncode, out, err


def _records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_signal_to_the_launcher_reaches_the_agent_which_exits_cleanly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc, log = _start(tmp_path, "exit")
    proc.send_signal(sig)
    status, out, err = _finish(proc)
    assert (status, out) == (0, f"agent got {sig.name}\n"), err
    (exit_rec,) = [r for r in _records(log) if r["kind"] == "exit"]
    assert exit_rec["status"] == 0
    assert exit_rec["reason"] == f"{sig.name} to the launcher, forwarded to the agent"


def test_without_the_sandbox_the_same_agent_exits_cleanly_too(tmp_path: Path) -> None:
    """The control: what the agent does with the signal is its own, sandboxed or not."""
    proc, _ = _start(tmp_path, "exit", launcher=[])
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc)[:2] == (0, "agent got SIGTERM\n")


def test_agent_dying_of_the_signal_gives_128_plus_n(tmp_path: Path) -> None:
    proc, log = _start(tmp_path, "default")
    proc.send_signal(signal.SIGTERM)
    status, out, err = _finish(proc)
    assert status == 128 + signal.SIGTERM, (out, err)
    (exit_rec,) = [r for r in _records(log) if r["kind"] == "exit"]
    assert exit_rec["signal"] == signal.SIGTERM


def test_agent_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    proc, log = _start(tmp_path, "ignore")
    proc.send_signal(signal.SIGTERM)
    status, out, err = _finish(proc)
    assert out == "agent got SIGTERM\n" and status == 128 + signal.SIGKILL, (out, err)
    assert "did not exit within 5s of SIGTERM: killed" in err
    (exit_rec,) = [r for r in _records(log) if r["kind"] == "exit"]
    assert exit_rec["signal"] == signal.SIGKILL
    assert exit_rec["reason"] == "did not exit within 5s of SIGTERM: killed"


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    """A long grace period, so only the second signal can end the agent."""
    launcher = [PY, "-c", SECOND_SIGNAL_LAUNCHER, str(tmp_path / "audit.jsonl")]
    proc, log = _start(tmp_path, "ignore", launcher=launcher)
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "agent got SIGTERM\n"
    proc.send_signal(signal.SIGHUP)
    status, out, err = _finish(proc)
    assert status == 128 + signal.SIGKILL, (out, err)
    assert "SIGHUP after SIGTERM: killed without waiting" in err
    (exit_rec,) = [r for r in _records(log) if r["kind"] == "exit"]
    assert exit_rec["reason"] == "SIGHUP after SIGTERM: killed without waiting"


# run() with a grace period of 10 minutes: the launcher the test above signals.
SECOND_SIGNAL_LAUNCHER = """
import sys
from sandbox.parent import launcher
from sandbox.policy.narrow import narrow
log, command = sys.argv[1], sys.argv[2:]
policy = narrow(None, "stdio rpath", ["@python:rx", "@system:rx"])
result = launcher.run(policy, command, log, stop_grace=600.0)
sys.exit(result.status)
"""


def test_terminal_interrupt_is_not_delivered_twice(tmp_path: Path) -> None:
    """^C on the launcher's terminal reaches the agent (same foreground process group)
    directly: the launcher does not forward it a second time."""
    code = textwrap.dedent(
        """
        import os, signal, sys
        got = []
        def on_int(*_):
            got.append(1)
            os.write(1, b"got-int\\n")  # not print: it may interrupt print("ready")'s own
        signal.signal(signal.SIGINT, on_int)
        print("ready", flush=True)
        line = sys.stdin.readline()
        print("interrupts:", len(got), flush=True)
        """
    )
    argv = [PY, "-m", "sandbox", "run", "-p", "stdio rpath", "-v", "@python:rx"]
    argv += ["-v", "@system:rx", "--audit-log", str(tmp_path / "a.jsonl"), "--", PY, "-c", code]
    proc, master = _pty_popen(argv, tmp_path)
    try:
        out = _read_until(master, b"ready", b"")
        os.write(master, b"\x03")  # ^C: the terminal signals its foreground group
        out = _read_until(master, b"^C", out)  # the terminal's echo of it
        # Under a warm launcher (pytest --sandbox-serve) the agent gets it one round trip
        # after the echo: wait for the first delivery before asking how many there were.
        out = _read_until(master, b"got-int", out)
        os.write(master, b"done\n")
        out = _read_until(master, b"interrupts: ", out)
        out = _read_until(master, b"\n", out[out.index(b"interrupts: ") :])
        assert proc.wait(timeout=GUARD) == 0, out
        assert out.startswith(b"interrupts: 1\r\n"), out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def _read_until(fd: int, marker: bytes, out: bytes) -> bytes:
    """`out` and what `fd` gives until `marker` is in it."""
    while marker not in out:
        ready, _, _ = select.select([fd], [], [], GUARD)
        assert ready, f"waited {GUARD}s for {marker!r}: {out!r}"
        out += os.read(fd, 4096)
    return out
