"""The escape suite: known ways out of a sandbox, each tried under `sandbox run` and refused.

Every escape is also run WITHOUT the sandbox (the same program, started directly) and must
succeed there: that is what makes each test able to fail. A refusal is shown either by the
kernel's answer the program prints (EACCES/EPERM from Landlock, a noexec mount, dropped
capabilities) or by the violation record of the parent (seccomp), with its syscall and
promise (null: never allowed), plus the exit status 159.

Programs inside the sandbox are Python (the venv interpreter, unveiled @python/@system);
where Python cannot make the call (x32, int 0x80) a small C program from tests/progs,
compiled at test time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from progs.kit import (
    DENIED,
    PROGS_SRC,
    PY,
    SECRET,
    Box,
    agent,
    assert_clean,
    assert_killed,
    compile_c,
    direct,
    fresh,
    make_box,
    ok_direct,
    results,
    sandboxed,
    show,
)

from sandbox.enforce import landlock


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


@pytest.fixture(scope="session")
def progs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("progs")
    for name in ("hello", "foreign_abi"):
        compile_c(PROGS_SRC / f"{name}.c", d / name)
    return d


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process outside the sandbox, target of signals and ptrace in the unsandboxed runs."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait()


# --------------------------------------------------------------------------- symlinks, links


READ_TARGET = """
report(read=attempt(lambda: read(sys.argv[1]).decode()))
"""


def test_symlink_out_of_unveiled_tree(box: Box) -> None:
    link = box.x / "link"
    link.symlink_to(box.secret)
    cmd = [*agent(READ_TARGET), str(link)]
    assert ok_direct(cmd)["read"] == SECRET
    got = assert_clean(sandboxed(box, cmd, unveil=[f"{box.x}:r"]))
    assert got["read"] == "EACCES"


def test_symlink_made_by_agent_out_of_unveiled_tree(box: Box) -> None:
    body = """
    link = os.path.join(sys.argv[1], "mine")
    report(symlink=attempt(os.symlink, sys.argv[2], link))
    report(read=attempt(lambda: read(link).decode()))
    """
    cmd = [*agent(body), str(box.x), str(box.secret)]
    assert ok_direct(cmd) == {"symlink": "ok", "read": SECRET}
    (box.x / "mine").unlink()
    got = assert_clean(sandboxed(box, cmd, promises="stdio rpath cpath", unveil=[f"{box.x}:rwc"]))
    # Making the link is allowed ('c'); following it out of the tree is not.
    assert got == {"symlink": "ok", "read": "EACCES"}


def test_hard_link_of_outside_file_refused(box: Box) -> None:
    body = """
    inside = os.path.join(sys.argv[1], "own")
    with open(inside, "w") as f:
        f.write("mine")
    report(inside=attempt(os.link, inside, os.path.join(sys.argv[1], "own2")))
    report(outside=attempt(os.link, sys.argv[2], os.path.join(sys.argv[1], "stolen")))
    report(read=attempt(lambda: read(os.path.join(sys.argv[1], "stolen")).decode()))
    """
    cmd = [*agent(body), str(box.x), str(box.secret)]
    assert ok_direct(cmd) == {"inside": "ok", "outside": "ok", "read": SECRET}
    for f in box.x.iterdir():
        f.unlink()
    got = assert_clean(
        sandboxed(box, cmd, promises="stdio rpath wpath cpath", unveil=[f"{box.x}:rwc"])
    )
    assert got["inside"] == "ok"  # a link within the tree is fine
    # Landlock refuses a link whose source is outside every unveiled tree; for link and
    # rename it answers EXDEV (the REFER rule), elsewhere EACCES.
    assert got["outside"] == "EXDEV"
    assert got["read"] == "ENOENT"


def test_preexisting_hard_link_gives_access(box: Box) -> None:
    """A documented limit, not an escape the sandbox can close: Landlock checks the path
    used, and a hard link made BEFORE the sandbox is a path inside the unveiled tree to
    the same inode. The operator must not unveil trees holding links to secrets."""
    os.link(box.secret, box.x / "hardlink")
    cmd = [*agent(READ_TARGET), str(box.x / "hardlink")]
    assert ok_direct(cmd)["read"] == SECRET
    got = assert_clean(sandboxed(box, cmd, unveil=[f"{box.x}:r"]))
    assert got["read"] == SECRET
    # The same file through its own (outside) path stays refused.
    got = assert_clean(
        sandboxed(box, [*agent(READ_TARGET), str(box.secret)], unveil=[f"{box.x}:r"])
    )
    assert got["read"] == "EACCES"


# --------------------------------------------------------------------------- /proc


@pytest.mark.parametrize("proc_unveiled", [True, False], ids=["proc-r", "proc-hidden"])
def test_proc_self_root(box: Box, proc_unveiled: bool) -> None:
    cmd = [
        *agent("report(read=attempt(lambda: read('/proc/self/root' + sys.argv[1]).decode()))"),
        str(box.secret),
    ]
    assert ok_direct(cmd)["read"] == SECRET
    unveil = [f"{box.x}:r", *(["/proc:r"] if proc_unveiled else [])]
    got = assert_clean(sandboxed(box, cmd, unveil=unveil))
    assert got["read"] == "EACCES"


LAUNCHER_PROC = """
ppid = os.getppid()
p = f"/proc/{ppid}"
report(ppid=ppid)
report(environ=attempt(lambda: read(p + "/environ").decode()))
report(mem=attempt(lambda: os.close(os.open(p + "/mem", os.O_RDONLY))))
report(root_list=attempt(lambda: str(len(os.listdir(p + "/root/")))))
report(root_secret=attempt(lambda: read(p + "/root" + sys.argv[1]).decode()))
report(cwd=attempt(lambda: str(len(os.listdir(p + "/cwd/")))))
"""


def test_proc_of_the_launcher(box: Box) -> None:
    """/proc/<launcher>/environ, mem, root, cwd: Landlock's ptrace restriction refuses
    access to a process outside the sandbox's domain."""
    env = {**os.environ, "LAUNCHER_SECRET": SECRET}
    cmd = [*agent(LAUNCHER_PROC), str(box.secret)]
    # Unsandboxed: the program reads its parent (an intermediate python holding the secret).
    wrapper = [PY, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))", *cmd]
    got = ok_direct(wrapper, env=env)
    assert SECRET in got["environ"] and got["mem"] == "ok" and got["root_secret"] == SECRET
    assert got["root_list"] != "EACCES" and got["cwd"] != "EACCES"

    r = sandboxed(box, cmd, unveil=["/proc:r"], env=env)
    got = assert_clean(r)
    assert got["ppid"] != os.getpid()  # its parent is the launcher
    for key in ("environ", "mem", "root_list", "root_secret", "cwd"):
        assert got[key] in DENIED, (key, got)


# --------------------------------------------------------------------------- descriptors


FD_PROBE = """
fd = int(sys.argv[1])
report(fstat=attempt(lambda: os.fstat(fd).st_size))
report(read=attempt(lambda: os.pread(fd, 100, 0)))
report(fds=sorted(int(n) for n in os.listdir("/proc/self/fd")))
"""


def test_inherited_descriptor_is_closed(box: Box) -> None:
    fd = os.open(box.secret, os.O_RDONLY)  # no O_CLOEXEC: inheritable by design of the test
    try:
        os.set_inheritable(fd, True)
        cmd = [*agent(FD_PROBE), str(fd)]
        got = ok_direct(cmd, pass_fds=[fd])
        assert got["read"] == SECRET and fd in got["fds"]
        got = assert_clean(sandboxed(box, cmd, unveil=["/proc:r"], pass_fds=[fd]))
    finally:
        os.close(fd)
    assert got["fstat"] == "EBADF" and got["read"] == "EBADF"
    # 0-2, the broker channel (3) and the descriptor of the listing itself: nothing else.
    assert fd not in got["fds"] and len(got["fds"]) <= 5, got


# --------------------------------------------------------------------------- pledge basics


WRITE_OPEN = """
report(read=read(sys.argv[1]).decode())
flags = {"rdwr": os.O_RDWR, "wronly": os.O_WRONLY, "creat": os.O_WRONLY | os.O_CREAT}[sys.argv[2]]
target = sys.argv[1] if sys.argv[2] != "creat" else sys.argv[1] + ".new"
os.write(os.open(target, flags, 0o644), b"X")
report(wrote=True)
"""


@pytest.mark.parametrize(
    ("mode", "promise"), [("rdwr", "wpath"), ("wronly", "wpath"), ("creat", "wpath cpath")]
)
def test_write_under_read_only_pledge(box: Box, mode: str, promise: str) -> None:
    """Writing under 'stdio rpath' is a violation naming what to add to this pledge: the
    promises the agent lacks (wpath, cpath), as pledge(2) reports them."""
    target = box.x / "data.txt"
    target.write_text("original")
    cmd = [*agent(WRITE_OPEN), str(target), mode]
    assert ok_direct(cmd) == {"read": "original", "wrote": True}
    target.write_text("original")
    with contextlib.suppress(FileNotFoundError):
        (box.x / "data.txt.new").unlink()
    r = sandboxed(box, cmd, promises="stdio rpath", unveil=[f"{box.x}:rwc"])
    assert results(r.stdout) == {"read": "original"}  # reading was fine, then the kill
    assert_killed(r, "openat", promise)
    assert target.read_text() == "original" and not (box.x / "data.txt.new").exists()


def test_exec_without_exec_promise(box: Box) -> None:
    cmd = agent("""os.execv("/bin/echo", ["echo", 'RESULT {"execd": true}'])""")
    assert ok_direct(cmd) == {"execd": True}
    r = sandboxed(box, cmd, promises="stdio rpath")
    assert "execd" not in results(r.stdout)
    assert_killed(r, "execve", "exec")


# --------------------------------------------------------------------------- fileless exec


MEMFD_EXEC = """
MFD_CLOEXEC, MFD_EXEC, MFD_NOEXEC_SEAL = 1, 0x10, 0x8
flags = MFD_CLOEXEC | {"plain": 0, "exec": MFD_EXEC, "sealed": MFD_NOEXEC_SEAL}[sys.argv[2]]
fd = os.memfd_create("payload", flags)
report(memfd="ok")
os.write(fd, read(sys.argv[1]))
report(exec=attempt(os.execve, fd, ["payload"], {}))
"""


@pytest.mark.parametrize(
    ("promises", "flags"),
    [
        ("stdio rpath exec", "plain"),
        ("stdio rpath exec prot_exec", "plain"),
        ("stdio rpath exec prot_exec", "exec"),
    ],
)
def test_fileless_exec_memfd_refused(box: Box, progs: Path, promises: str, flags: str) -> None:
    """memfd_create without MFD_NOEXEC_SEAL is never allowed, whatever is promised."""
    cmd = [*agent(MEMFD_EXEC), str(progs / "hello"), flags]
    p = direct(cmd)
    assert p.returncode == 42 and "HELLO-RAN" in p.stdout, p  # fexecve of the memfd ran it
    r = sandboxed(box, cmd, promises=promises, unveil=[f"{progs}:rx"])
    assert "HELLO-RAN" not in r.stdout and "memfd" not in results(r.stdout)
    assert_killed(r, "memfd_create", None)


def test_fileless_exec_sealed_memfd_cannot_exec(box: Box, progs: Path) -> None:
    """With exec and prot_exec promised, a memfd may be made, sealed non-executable: the
    exec of it fails (EACCES) and the agent goes on."""
    cmd = [*agent(MEMFD_EXEC), str(progs / "hello"), "sealed"]
    got = assert_clean(
        sandboxed(box, cmd, promises="stdio rpath exec prot_exec", unveil=[f"{progs}:rx"])
    )
    assert got == {"memfd": "ok", "exec": "EACCES"}


# --------------------------------------------------------------------------- W^X


WX = """
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS = 2, 0x20
libc.mmap.restype = ctypes.c_void_p
c = ctypes
libc.mmap.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_int, c.c_int, c.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
def mmap(prot):
    a = libc.mmap(None, 4096, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    return errno.errorcode[ctypes.get_errno()] if a in (None, 2**64 - 1) else "ok"
def mprotect(prot):
    a = libc.mmap(None, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    return "ok" if libc.mprotect(a, 4096, prot) == 0 else errno.errorcode[ctypes.get_errno()]
what = sys.argv[1]
report(**{what: {"mmap-rx": lambda: mmap(PROT_READ | PROT_EXEC),
                 "mmap-wx": lambda: mmap(PROT_READ | PROT_WRITE | PROT_EXEC),
                 "mprotect-rx": lambda: mprotect(PROT_READ | PROT_EXEC),
                 "mprotect-wx": lambda: mprotect(PROT_READ | PROT_WRITE | PROT_EXEC)}[what]()})
"""


@pytest.mark.parametrize(
    ("what", "promises", "syscall", "promise"),
    [
        ("mmap-rx", "stdio rpath", "mmap", "prot_exec"),
        # writable and executable at once: only 'jit' allows it (tests/test_messages.py)
        ("mmap-wx", "stdio rpath", "mmap", "jit"),
        ("mmap-wx", "stdio rpath prot_exec", "mmap", "jit"),
        ("mprotect-rx", "stdio rpath", "mprotect", "prot_exec"),
        ("mprotect-wx", "stdio rpath prot_exec", "mprotect", "jit"),
    ],
)
def test_wx_memory_refused(
    box: Box, what: str, promises: str, syscall: str, promise: str | None
) -> None:
    cmd = [*agent(WX), what]
    assert ok_direct(cmd) == {what: "ok"}
    r = sandboxed(box, cmd, promises=promises)
    assert what not in results(r.stdout)
    assert_killed(r, syscall, promise)


@pytest.mark.parametrize("what", ["mmap-rx", "mprotect-rx"])
def test_executable_memory_with_prot_exec(box: Box, what: str) -> None:
    """The other side: prot_exec allows executable memory, never writable at once."""
    got = assert_clean(sandboxed(box, [*agent(WX), what], promises="stdio rpath prot_exec"))
    assert got == {what: "ok"}


WRITE_THEN_RUN = """
src, dst = sys.argv[1], sys.argv[2]
fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
os.write(fd, read(src))
os.close(fd)
report(written="ok")
import mmap
def map_exec():
    with open(dst, "rb") as f:
        prot = mmap.PROT_READ | mmap.PROT_EXEC
        m = mmap.mmap(f.fileno(), 4096, flags=mmap.MAP_PRIVATE, prot=prot)
        m.close()
report(mmap_exec=attempt(map_exec))
report(exec=attempt(os.execv, dst, [dst]))
"""


@pytest.mark.parametrize(
    "layout",
    ["rwc", "rx-parent+rwc"],
    ids=["writable-only", "writable-inside-rx-tree"],
)
def test_written_file_cannot_be_executed(box: Box, progs: Path, layout: str) -> None:
    """A file the agent wrote into a writable unveiled path (no 'x' on it) can be neither
    exec'd nor mapped executable, even with 'exec' promised. In the second layout Landlock
    itself would allow the exec (the parent tree is unveiled rx, and Landlock grants the
    union): only the noexec mount refuses it."""
    w = box.x / "w"
    w.mkdir()
    cmd = [*agent(WRITE_THEN_RUN), str(progs / "hello"), str(w / "payload")]
    p = direct(cmd)
    assert p.returncode == 42 and "HELLO-RAN" in p.stdout, p
    assert results(p.stdout) == {"written": "ok", "mmap_exec": "ok"}
    (w / "payload").unlink()
    unveil = [f"{progs}:rx", f"{w}:rwc"]
    if layout == "rx-parent+rwc":
        unveil.append(f"{box.x}:rx")
    r = sandboxed(box, cmd, promises="stdio rpath wpath cpath exec", unveil=unveil)
    got = assert_clean(r)
    assert "HELLO-RAN" not in r.stdout
    assert got["written"] == "ok"
    assert got["mmap_exec"] in DENIED and got["exec"] in DENIED, got
    points = r.of_kind("start")[0]["enforced"]["noexec_writable_paths"]
    # The mount point may be an ancestor (writable paths share one mount, see mounts.py).
    assert any(w.as_posix() == p or w.as_posix().startswith(p + "/") for p in points), points


def test_written_file_executes_where_unveiled_x(box: Box, progs: Path) -> None:
    """By design a path unveiled with 'x' (rwcx) is not made noexec: the operator allowed it."""
    w = box.x / "w"
    w.mkdir()
    cmd = [*agent(WRITE_THEN_RUN), str(progs / "hello"), str(w / "payload")]
    r = sandboxed(
        box, cmd, promises="stdio rpath wpath cpath exec", unveil=[f"{progs}:rx", f"{w}:rwcx"]
    )
    assert r.status == 42 and "HELLO-RAN" in r.stdout and not r.violations, show(r)


# --------------------------------------------------------------------------- never allowed


NEVER_CALL = """
nr, args = int(sys.argv[1]), [int(a, 0) for a in sys.argv[2:]]
buf = ctypes.create_string_buffer(4096)
args = [ctypes.addressof(buf) if a == -4242 else a for a in args]  # -4242: a zeroed buffer
report(called=raw(nr, *args))
"""
BUF = "-4242"

# (call, number, arguments): harmless arguments; unsandboxed the call returns (a value or an
# errno), it does not kill the caller. kexec_load gets invalid flags (0 segments would unload).
NEVER_CALLS = [
    ("io_uring_setup", 425, ["1", BUF]),
    ("keyctl", 250, ["0", "-3", "0"]),  # KEYCTL_GET_KEYRING_ID of the session keyring
    ("bpf", 321, ["0", "0", "0"]),
    ("perf_event_open", 298, [BUF, "0", "-1", "-1", "0"]),
    ("userfaultfd", 323, ["0"]),
    ("kexec_load", 246, ["0", "0", "0", "0xffff0000"]),
    ("unshare", 272, [str(0x10000000)]),  # CLONE_NEWUSER
    ("personality", 135, [str(0x0400000)]),  # READ_IMPLIES_EXEC
    ("mount", 165, ["0", "0", "0", "0", "0"]),
    ("init_module", 175, ["0", "0", "0"]),
    ("pidfd_getfd", 438, ["-1", "0", "0"]),
    ("open_by_handle_at", 304, ["-100", BUF, "0"]),
]


@pytest.mark.parametrize(("syscall", "nr", "args"), NEVER_CALLS, ids=[c[0] for c in NEVER_CALLS])
def test_never_allowed_calls(box: Box, syscall: str, nr: int, args: list[str]) -> None:
    cmd = [*agent(NEVER_CALL), str(nr), *args]
    assert "called" in ok_direct(cmd)  # unsandboxed the call returns to the program
    r = sandboxed(box, cmd, promises="stdio rpath proc thread id exec prot_exec")
    assert "called" not in results(r.stdout)
    assert_killed(r, syscall, None)


def test_io_uring_setup_works_unsandboxed() -> None:
    """So the io_uring case above is meaningful: the kernel really hands out a ring."""
    got = ok_direct([*agent(NEVER_CALL), "425", "1", BUF])
    assert isinstance(got["called"], int) and got["called"] >= 0, got


CLONE_NEWUSER = """
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
pid = raw(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
if pid == 0:
    os._exit(0)
if isinstance(pid, int):
    os.waitpid(pid, 0)
report(clone=pid if isinstance(pid, str) else "ok")
"""


def test_clone_newuser_refused_with_proc(box: Box) -> None:
    cmd = agent(CLONE_NEWUSER)
    assert ok_direct(cmd) == {"clone": "ok"}
    r = sandboxed(box, cmd, promises="stdio rpath proc thread")
    assert "clone" not in results(r.stdout)
    assert_killed(r, "clone", None)


def test_fork_allowed_with_proc(box: Box) -> None:
    """The other side of the clone test: a plain fork works under 'proc'."""
    body = """
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    report(child=os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    assert assert_clean(sandboxed(box, agent(body), promises="stdio rpath proc")) == {"child": 7}


TIOCSTI = """
import fcntl, termios
try:
    master, slave = os.openpty()
except OSError:
    slave = 0  # no terminal to be had: the filter decides on the request number anyway
report(tiocsti=attempt(lambda: fcntl.ioctl(slave, termios.TIOCSTI, b"x") and None))
"""


def test_tiocsti_refused(box: Box) -> None:
    cmd = agent(TIOCSTI)
    assert ok_direct(cmd) == {"tiocsti": "ok"}
    r = sandboxed(
        box, cmd, promises="stdio rpath wpath tty", unveil=["/dev/ptmx:rw", "/dev/pts:rw"]
    )
    assert "tiocsti" not in results(r.stdout)
    assert_killed(r, "ioctl", None)


# --------------------------------------------------------------------------- other processes


PTRACE = """
target = int(sys.argv[2]) if len(sys.argv) > 2 else os.getppid()
what = sys.argv[1]
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
if what == "ptrace":
    r = raw(101, PTRACE_ATTACH, target, 0, 0)
    if r == 0:
        os.waitpid(target, 0)
        raw(101, PTRACE_DETACH, target, 0, 0)
    report(ptrace="ok" if r == 0 else r)
else:
    try:
        with open(f"/proc/{target}/maps") as f:
            addr = int(f.readline().split("-")[0], 16)
    except OSError:
        addr = 0x10000
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(16)
    local, remote = iovec(ctypes.addressof(buf), 16), iovec(addr, 16)
    r = raw(310, target, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    report(process_vm_readv="ok" if r == 16 else r)
"""


@pytest.mark.parametrize(
    ("what", "syscall"), [("ptrace", "ptrace"), ("vm_readv", "process_vm_readv")]
)
def test_ptrace_and_vm_read_of_launcher(
    box: Box, sleeper: subprocess.Popen[bytes], what: str, syscall: str
) -> None:
    cmd = [*agent(PTRACE), what]
    assert list(ok_direct([*cmd, str(sleeper.pid)]).values()) == ["ok"]
    r = sandboxed(box, cmd, promises="stdio rpath proc")  # target: its parent, the launcher
    assert not results(r.stdout)
    assert_killed(r, syscall, None)


KILL = """
target = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
report(kill=attempt(os.kill, target, 9))
pid = os.fork()
if pid == 0:
    import time
    time.sleep(30)
    os._exit(0)
report(own_child=attempt(os.kill, pid, 9))
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("target", ["launcher", "outside"])
def test_signals_out_of_the_sandbox(
    box: Box, sleeper: subprocess.Popen[bytes], target: str
) -> None:
    """With 'proc', kill() is allowed by seccomp; Landlock's signal scope refuses it for
    processes outside the sandbox (EPERM), while the agent's own children can be signalled."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert ok_direct([*agent(KILL), str(other.pid)]) == {"kill": "ok", "own_child": "ok"}
        assert other.wait(timeout=10) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            other.kill()
    cmd = [*agent(KILL), *([str(sleeper.pid)] if target == "outside" else [])]
    r = sandboxed(box, cmd, promises="stdio rpath proc")
    got = assert_clean(r)
    # EPERM from the Landlock signal scope, or ESRCH: the agent's pid namespace does not
    # even contain the outside process.
    assert got["kill"] in {"EPERM", "ESRCH"} and got["own_child"] == "ok", got
    assert sleeper.poll() is None  # still alive
    exits = r.of_kind("exit")
    assert exits and exits[0].get("status") == 0, r.records  # the launcher lived to record it


# --------------------------------------------------------------------------- unix sockets


UNIX_CONNECT = """
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
addr = sys.argv[1].replace("@", "\\0", 1) if sys.argv[1].startswith("@") else sys.argv[1]
def talk():
    s.connect(addr)
    return s.recv(64)
report(connect=attempt(talk))
"""


class UnixServer:
    """A unix socket server outside the sandbox, answering one greeting per connection."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        import threading

        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(b"hello-from-outside")

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


UNIX_POLICY = {"version": 1, "pledge": "stdio rpath unix", "best_effort": True}


def test_connect_to_path_unix_socket_outside_unveil(box: Box) -> None:
    """Landlock confines pathname unix sockets from ABI 9 on (resolve_unix). Below it the
    parent decides each connect (SPEC section 8): it resolves the address as the agent
    would and connects the agent's socket only to a socket unveiled 'w'. Both ways the
    strict run starts (no best_effort) and the connect out of the tree is refused."""
    outside = box.root / "outside"
    outside.mkdir()
    path = str(outside / "server.sock")
    server = UnixServer(path)
    try:
        cmd = [*agent(UNIX_CONNECT), path]
        assert ok_direct(cmd) == {"connect": "hello-from-outside"}
        strict = sandboxed(box, cmd, promises="stdio rpath unix", unveil=[f"{box.x}:rwc"])
        read_only = sandboxed(
            box, cmd, promises="stdio rpath unix", unveil=[f"{box.x}:rwc", f"{outside}:r"]
        )
        granted = sandboxed(
            box, cmd, promises="stdio rpath unix", unveil=[f"{box.x}:rwc", f"{outside}:w"]
        )
    finally:
        server.close()
    assert assert_clean(strict)["connect"] in DENIED, strict
    assert assert_clean(read_only)["connect"] in DENIED, read_only  # 'w' is what it needs
    assert assert_clean(granted) == {"connect": "hello-from-outside"}, granted
    if landlock.abi_version() < 9:
        denied = [o for o in strict.ops if o["op"] == "connect" and o["decision"] == "deny"]
        assert denied and denied[0]["path"] == path, strict.records
        assert [o["decision"] for o in granted.ops if o["op"] == "connect"] == ["allow"]
        assert strict.of_kind("start")[0]["enforced"]["not_enforced"] == []


def test_connect_to_abstract_unix_socket_outside(box: Box) -> None:
    name = f"@outheis-escape-{os.getpid()}-{fresh()}"
    server = UnixServer("\0" + name[1:])
    try:
        cmd = [*agent(UNIX_CONNECT), name]
        assert ok_direct(cmd) == {"connect": "hello-from-outside"}
        got = assert_clean(sandboxed(box, cmd, promises=None, policy=UNIX_POLICY))
    finally:
        server.close()
    # EPERM from the Landlock scope where the agent shares the host's network namespace;
    # where the parent decides unix connects (no resolve_unix) the agent has a network
    # namespace of its own, in which the outside name does not exist: ECONNREFUSED.
    assert got["connect"] in {"EPERM", "ECONNREFUSED"}, got


def test_unix_sockets_inside_the_sandbox_work(box: Box) -> None:
    """The other side: the agent's own sockets (path in its tree, abstract) connect."""
    body = """
    import socket, threading
    def pair(addr):
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(addr)
        srv.listen(1)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(addr)
        conn, _ = srv.accept()
        conn.sendall(b"inside")
        return c.recv(16)
    report(path=attempt(pair, os.path.join(sys.argv[1], "own.sock")))
    report(abstract=attempt(pair, "\\0outheis-inside-%d" % os.getpid()))
    """
    got = assert_clean(
        sandboxed(
            box,
            [*agent(body), str(box.x)],
            promises=None,
            policy={
                **UNIX_POLICY,
                "pledge": "stdio rpath cpath unix",
                "unveil": {str(box.x): "rwc"},
            },
        )
    )
    assert got == {"path": "inside", "abstract": "inside"}


# --------------------------------------------------------------------------- foreign ABIs


@pytest.mark.parametrize("abi", ["x32", "int80"])
def test_foreign_abi_syscalls_killed_by_kernel(box: Box, progs: Path, abi: str) -> None:
    """x32 numbers and i386 int 0x80 are killed by the filter itself (SIGSYS, no parent
    decision): the launcher exits 128+SIGSYS and says what happened."""
    cmd = [str(progs / "foreign_abi"), abi]
    p = direct(cmd)
    assert p.returncode == 0 and f"RETURNED {abi}" in p.stdout, p  # the kernel answered
    # rpath: static glibc reads /proc/self/exe at start-up
    r = sandboxed(box, cmd, promises="stdio rpath", unveil=[f"{progs}:rx"])
    assert f"BEFORE {abi}" in r.stdout and "RETURNED" not in r.stdout, show(r)
    assert r.status == 128 + signal.SIGSYS, show(r)
    assert "killed by the kernel (SIGSYS)" in r.stderr, show(r)
    assert [e.get("signal") for e in r.of_kind("exit")] == [signal.SIGSYS], r.records


# --------------------------------------------------------------------------- privileges


CAPS = """
def cap(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
report(caps={f: cap(f) for f in ("CapEff", "CapPrm", "CapBnd", "CapAmb")})
def give_away(path):  # fchown: path-based chown is refused by the filter itself
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchown(fd, 65534, -1)
    finally:
        os.close(fd)
report(chown=attempt(give_away, sys.argv[1]))
report(read_other=attempt(lambda: read(sys.argv[2]).decode()))
pid = os.fork()  # the uid change in a child, so that the parent stays root for what follows
if pid == 0:
    try:
        os.setuid(65534)
        os._exit(0)
    except OSError as e:
        os._exit(e.errno)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
report(setuid="ok" if code == 0 else errno.errorcode[code])
import socket
def raw_socket():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
report(raw_socket=attempt(raw_socket))
"""


def test_root_agent_has_no_capabilities(box: Box) -> None:
    """The agent runs as root, with 'id', 'chown', 'proc' and 'inet' promised: without
    capabilities root cannot give a file away, read another user's 0600 file or change its
    uid; a raw socket (CAP_NET_RAW) is never allowed by the filter either."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the point is an agent running as root")
    mine = box.x / "rootfile"
    mine.write_text("root's")
    other = box.x / "others"
    other.write_text("nobody's")
    os.chown(other, 65534, 65534)
    other.chmod(0o600)
    cmd = [*agent(CAPS), str(mine), str(other)]
    got = ok_direct(cmd)
    assert got["caps"]["CapEff"] != 0 and got["chown"] == "ok" and got["read_other"] == "nobody's"
    assert got["setuid"] == "ok" and got["raw_socket"] == "ok"
    os.chown(mine, 0, 0)
    r = sandboxed(
        box,
        cmd,
        promises="stdio rpath wpath id chown proc inet",
        unveil=[f"{box.x}:rw", "/proc:r"],
    )
    got = results(r.stdout)
    assert got["caps"] == {"CapEff": 0, "CapPrm": 0, "CapBnd": 0, "CapAmb": 0}, show(r)
    assert got["chown"] == "EPERM" and got["read_other"] == "EACCES" and got["setuid"] == "EPERM"
    assert "raw_socket" not in got
    assert_killed(r, "socket", None)
    assert mine.stat().st_uid == 0


def test_device_not_unveiled(box: Box) -> None:
    body = """
    report(kmsg=attempt(lambda: os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))))
    report(null=attempt(lambda: os.close(os.open("/dev/null", os.O_RDWR))))
    """
    if not os.path.exists("/dev/kmsg"):
        pytest.skip("no /dev/kmsg on this machine")
    assert ok_direct(agent(body)) == {"kmsg": "ok", "null": "ok"}
    got = assert_clean(
        sandboxed(box, agent(body), promises="stdio rpath wpath", unveil=["@devices:rw"])
    )
    assert got == {"kmsg": "EACCES", "null": "ok"}


def test_mknod_device_refused(box: Box) -> None:
    """A FIFO is what 'dpath' allows; a device node is never allowed (it would open the
    device around the unveil)."""
    body = """
    import stat
    report(fifo=attempt(os.mkfifo, os.path.join(sys.argv[1], "fifo")))
    dev = os.path.join(sys.argv[1], "mem")
    report(mknod=attempt(os.mknod, dev, stat.S_IFCHR | 0o600, os.makedev(1, 1)))
    """
    cmd = [*agent(body), str(box.x)]
    assert ok_direct(cmd) == {"fifo": "ok", "mknod": "ok"}
    for f in box.x.iterdir():
        f.unlink()
    r = sandboxed(box, cmd, promises="stdio rpath dpath", unveil=[f"{box.x}:rwc"])
    assert results(r.stdout) == {"fifo": "ok"}
    assert_killed(r, "mknodat", None)
    assert not (box.x / "mem").exists()


METADATA_BY_PATH = {
    "chmod": "os.chmod(sys.argv[1], 0o666)",
    "utime": "os.utime(sys.argv[1], (0, 0))",
    "setxattr": "os.setxattr(sys.argv[1], 'user.outheis', b'planted')",
    "chown": "os.chown(sys.argv[1], os.getuid(), os.getgid())",
}

METADATA_BY_FD = """
def change(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.chmod(fd, 0o640)
        os.utime(fd, (0, 0))
        os.setxattr(fd, "user.outheis", b"mine")
        os.chown(fd, os.getuid(), os.getgid())
    finally:
        os.close(fd)
report(inside=attempt(change, sys.argv[1]))
report(outside=attempt(change, sys.argv[2]))
"""


def _untouched(secret: Path) -> None:
    st = secret.stat()
    assert (st.st_mode & 0o777, st.st_mtime) == (0o600, 1_000_000)
    assert "user.outheis" not in os.listxattr(secret)


@pytest.mark.parametrize("op", sorted(METADATA_BY_PATH))
def test_metadata_changes_by_path_are_refused(box: Box, op: str) -> None:
    """Landlock has no right for modes, times, xattrs or owners, and a root agent owns
    every root file: path-based forms would reach files OUTSIDE the unveil. The parent
    performs them (SPEC section 8) only beneath an unveil with 'w': outside it the call
    fails with EACCES, recorded, and the file is untouched; inside it works."""
    box.secret.chmod(0o600)
    cmd = [*agent(f"report(done=attempt(lambda: {METADATA_BY_PATH[op]}))"), str(box.secret)]
    assert ok_direct(cmd) == {"done": "ok"}
    box.secret.chmod(0o600)
    os.utime(box.secret, (1_000_000, 1_000_000))
    with contextlib.suppress(OSError):
        os.removexattr(box.secret, "user.outheis")
    r = sandboxed(box, cmd, promises="stdio rpath fattr chown", unveil=[f"{box.x}:rwc"])
    assert assert_clean(r) == {"done": "EACCES"}, r
    assert [(o["path"], o["decision"]) for o in r.ops] == [(str(box.secret), "deny")], r.ops
    _untouched(box.secret)
    mine = box.x / "mine.txt"
    mine.write_text("mine")
    inside = sandboxed(
        box, [*cmd[:-1], str(mine)], promises="stdio rpath fattr chown", unveil=[f"{box.x}:rwc"]
    )
    assert assert_clean(inside) == {"done": "ok"}, inside
    assert [(o["path"], o["decision"]) for o in inside.ops] == [(str(mine), "allow")]


def test_metadata_changes_by_descriptor_need_an_unveiled_open(box: Box) -> None:
    """The other side: fchmod/futimens/fsetxattr/fchown work on a file the agent could open
    (inside its unveil); a file outside cannot even be opened."""
    box.secret.chmod(0o600)
    os.utime(box.secret, (1_000_000, 1_000_000))
    mine = box.x / "mine.txt"
    mine.write_text("mine")
    r = sandboxed(
        box,
        [*agent(METADATA_BY_FD), str(mine), str(box.secret)],
        promises="stdio rpath fattr chown",
        unveil=[f"{box.x}:rwc"],
    )
    got = assert_clean(r)
    assert got == {"inside": "ok", "outside": "EACCES"}, got
    assert mine.stat().st_mode & 0o777 == 0o640
    _untouched(box.secret)


INOTIFY = """
IN_CREATE = 0x100
fd = libc.inotify_init1(0)
ctypes.set_errno(0)
w = libc.inotify_add_watch(fd, os.fsencode(sys.argv[1]), IN_CREATE)
report(watch="ok" if w >= 0 else errno.errorcode[ctypes.get_errno()])
if w >= 0 and len(sys.argv) > 2:
    open(os.path.join(sys.argv[1], "created-by-other"), "w").close()  # unsandboxed only
    report(seen=os.read(fd, 4096)[16:].rstrip(b"\\0").decode())
"""


def test_inotify_watch_outside_the_unveil(box: Box) -> None:
    """A watch on a directory outside the unveil would report the names of files created,
    removed or opened there (listing it without 'r'): it must be refused, by the filter
    (a violation) or by the kernel (an errno)."""
    outside = box.root / "outside"
    outside.mkdir()
    assert ok_direct([*agent(INOTIFY), str(outside), "create"]) == {
        "watch": "ok",
        "seen": "created-by-other",
    }
    r = sandboxed(box, [*agent(INOTIFY), str(outside)], unveil=[f"{box.x}:r"])
    got = results(r.stdout)
    refused_by_filter = any(v["syscall"] == "inotify_add_watch" for v in r.violations)
    assert refused_by_filter or got.get("watch") in DENIED | {"ENOSYS"}, show(r)
