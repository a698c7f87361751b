"""What the corpus of real programs (tests/test_corpus.py) found, fixed, each on both sides.

- A refusal names the promise that brings the path where one does (`dns` for the resolver's
  files, `tty` for /dev/tty, `tmppath` for /tmp itself, `vminfo` for /proc/meminfo), and a
  /proc/PID path is named as what it is (no unveil of one process's directory can match the
  next run's); with Landlock's own records (root, kernel audit on) and with --trace-unveil.
- --trace-unveil names no file that does not exist (the lookup fails with ENOENT before
  Landlock is asked): git, pip, gcc and node probe dozens of such paths.
- --trace-unveil names the TCP port Landlock refuses (curl without the server's port in
  network.connect), and only TCP: a UDP connect is not refused and not named.
- Setting the ids one already has (GNU make's seteuid(geteuid())) is answered by the
  parent; a change of ids stays a violation needing 'id'.
- `stdio` brings /dev/urandom and /dev/random read-only (getrandom(2) by another name:
  git cannot add an object without it).
- Messages decode the times of utimensat/utimes/utime and fcntl's struct flock.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from progs.corpus import VIOLATION_EXIT, WHO, Recipe, Work, work_dir
from progs.snippets import kernel_audit_switched, kernel_audit_unavailable, sandbox_cli

from sandbox.enforce import syscalls as S
from sandbox.enforce.plan import seccomp_rules, trace_rules
from sandbox.enforce.rules import match
from sandbox.parent import denials
from sandbox.policy.model import Unveil

PY = sys.executable


@pytest.fixture(params=WHO)
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Work]:
    yield from work_dir(request, tmp_path)


def _python(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def _recipe(pledge: str, **kw: object) -> Recipe:
    unveil = {"@python": "rx", **kw.pop("unveil", {})}  # type: ignore[dict-item]
    return Recipe("a probe", pledge, unveil, **kw)  # type: ignore[arg-type]


# --- the fix names what fits ----------------------------------------------------------


def _fix(path: str, blockers: str, pledge: str = "stdio rpath", writes: bool = False) -> str:
    r = denials.Refusal(tuple(blockers.split()), syscall="openat", path=path, writes=writes)
    return denials.fix_for(r, (), pledge.split())[1]


def test_fix_names_the_promise_that_brings_the_path() -> None:
    assert _fix("/etc/resolv.conf", "fs.read_file") == (
        "add '/etc/resolv.conf: r' or the promise 'dns', which brings it"
    )
    assert _fix("/etc/passwd", "fs.read_file") == (
        "add '/etc/passwd: r' or the promise 'getpw', which brings it"
    )
    assert _fix("/dev/tty", "fs.read_file fs.write_file", writes=True) == (
        "add '/dev/tty: rw' or the promise 'tty', which brings it"
    )
    assert _fix("/proc/meminfo", "fs.read_file") == (
        "add '/proc/meminfo: r' or the promise 'vminfo', which brings it"
    )
    assert _fix("/sys/devices/system/cpu/online", "fs.read_file") == (
        "add '/sys/devices/system/cpu/online: r' or the promise 'vminfo', which brings "
        "/sys/devices/system/cpu: r"
    )
    # tmppath for temporary files in /tmp itself, not for what else lives beneath it.
    assert _fix("/tmp", "fs.make_reg", writes=True) == (
        "add '/tmp: wc' or the promise 'tmppath', which brings it"
    )
    assert _fix("/tmp/work/data", "fs.read_dir") == "add '/tmp/work/data: r'"
    # Not 'ps' for one file of /proc (it would bring all of /proc).
    assert _fix("/proc/filesystems", "fs.read_file") == "add '/proc/filesystems: r'"
    # A promise already held is not offered again; a letter it does not give neither.
    assert _fix("/etc/resolv.conf", "fs.read_file", "stdio rpath dns") == (
        "add '/etc/resolv.conf: r'"
    )
    assert _fix("/etc/passwd", "fs.write_file", writes=True) == "add '/etc/passwd: w'"
    # An ordinary path: as before.
    assert _fix("/srv/data.txt", "fs.read_file") == "add '/srv/data.txt: r'"


def test_a_proc_pid_path_is_named_as_what_it_is() -> None:
    fix = _fix("/proc/4242/cgroup", "fs.read_file")
    assert fix.startswith("add '/proc: r' or the promise 'ps', which brings it"), fix
    assert "cannot be unveiled by itself" in fix and "/proc/4242" not in fix, fix
    assert _fix("/proc/4242", "fs.read_dir").startswith("add '/proc: r'")


# --- --trace-unveil: what does not exist, and TCP ports ------------------------------------


def test_trace_names_no_file_that_does_not_exist(work: Work) -> None:
    missing = "/etc/no-such-file-of-the-corpus"
    assert not os.path.lexists(missing)
    cmd = ["cat", missing, "/etc/hostname"]
    r = work.run(Recipe("cat", "stdio rpath", {}), cmd, trace=True)
    assert r.status == 1, r
    assert f"cat: {missing}: No such file or directory" in r.stderr  # ENOENT, not Landlock
    assert "cat: /etc/hostname: Permission denied" in r.stderr
    named = {d.get("path") for d in r.of_kind("denied")}
    assert "/etc/hostname" in named and missing not in named, named
    assert missing not in r.stderr.replace(f"cat: {missing}", "")
    # Unsandboxed, the same user gets the same ENOENT: the file is simply not there.
    p = work.host(cmd)
    assert f"{missing}: No such file or directory" in p.stderr and p.returncode == 1


def test_trace_names_creation_only_where_the_directory_exists(work: Work) -> None:
    work.mkdir("ro")
    sh = "echo x > ro/new.txt; echo y > nodir/new.txt; true"
    r = work.run(Recipe("sh", "stdio rpath wpath cpath proc exec", {"ro": "r"}), ["sh", "-c", sh],
                 trace=True)  # fmt: skip
    assert r.status == 0, r
    named = {d.get("path") for d in r.of_kind("denied")}
    assert str(work.dir / "ro") in named and str(work.dir / "nodir") not in named, named


TCP_AND_UDP = """
import socket, sys
port, other = int(sys.argv[1]), int(sys.argv[2])
for p in (port, other):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", p)); print("tcp", p, "connected")
    except OSError as e:
        print("tcp", p, "refused", e.errno)
    s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", other)); print("udp", other, "connected")
"""


@pytest.fixture
def listening() -> Iterator[tuple[int, int]]:
    """Two listening TCP ports on loopback: the allowed one and the other."""
    a, b = socket.socket(), socket.socket()
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.listen()
    try:
        yield a.getsockname()[1], b.getsockname()[1]
    finally:
        a.close()
        b.close()


def test_trace_names_the_tcp_port_landlock_refuses(work: Work, listening: tuple[int, int]) -> None:
    port, other = listening
    recipe = _recipe("stdio rpath inet", network={"connect": [port]})
    cmd = [*_python(TCP_AND_UDP), str(port), str(other)]
    r = work.run(recipe, cmd, trace=True)
    assert r.status == 0, r
    assert f"tcp {port} connected" in r.stdout and f"tcp {other} refused 13" in r.stdout, r
    assert f"udp {other} connected" in r.stdout  # Landlock's port rules see TCP only
    named = [d for d in r.of_kind("denied") if d.get("port") is not None]
    assert [(d["port"], d["access"], d["source"]) for d in named] == [
        (other, ["net.connect_tcp"], "parent")
    ], named
    line = (
        f"Landlock refused connect (connect to TCP port {other}): add {other} to "
        "network.connect (with the promise 'inet') (as the parent read the call)"
    )
    assert line in r.stderr, r.stderr
    # Following the fix, both connect; and unsandboxed the same program connects to both.
    r = work.run(_recipe("stdio rpath inet", network={"connect": [port, other]}), cmd, trace=True)
    assert f"tcp {other} connected" in r.stdout, r
    assert not [d for d in r.of_kind("denied") if d.get("port") is not None], r
    assert f"tcp {other} connected" in work.host(cmd).stdout


def test_trace_names_a_refused_bind(work: Work) -> None:
    code = """
    import socket
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0)); print("bound")
    except OSError as e:
        print("refused", e.errno)
    """
    r = work.run(_recipe("stdio rpath inet", network={"bind": [1]}), _python(code), trace=True)
    assert r.stdout.strip() == "refused 13", r
    named = [d for d in r.of_kind("denied") if d.get("port") == 0]
    assert named and named[0]["access"] == ["net.bind_tcp"], r.of_kind("denied")
    assert "add 0 to network.bind (with the promise 'inet')" in r.stderr
    assert work.host(_python(code)).stdout.strip() == "bound"


def test_tracing_tcp_calls_changes_no_decision() -> None:
    """connect and bind are traced only where the pledge allows them outright; where the
    parent decides them (unix without Landlock's resolve_unix, dns) they stay routed."""
    args = [3, 0x7F0000001000, 16, 0, 0, 0]
    for pledge, resolve_unix in (
        ("stdio inet", True),
        ("stdio inet unix", False),
        ("stdio dns", True),
        ("stdio rpath", True),
    ):
        base = seccomp_rules(set(pledge.split()), None, resolve_unix=resolve_unix)
        traced = trace_rules(base)
        for call in ("connect", "bind"):
            before, after = match(base, call, args), match(traced, call, args)
            if before is not None and before.action == "allow":
                assert after is not None and after.handler == "trace", (pledge, call)
            else:
                assert after == before, (pledge, call, before, after)


# --- the parent names the promise: with Landlock's own records (root, kernel audit on) ----


@pytest.fixture
def kernel_audit_on() -> Iterator[None]:
    """Kernel audit switched on for one test (host-wide), restored after it."""
    why = kernel_audit_unavailable()
    if why is not None:
        pytest.skip(why)
    with kernel_audit_switched(1):
        yield


PROBES = """
echo > /tmp/corpus-probe-$$
cat /proc/self/status > /dev/null
cat /etc/resolv.conf /proc/meminfo > /dev/null
rm -f /tmp/corpus-probe-$$
"""


def test_landlock_records_name_the_promise_that_fits(tmp_path: Path, kernel_audit_on: None) -> None:
    d = tmp_path / "w"
    d.mkdir()
    w = Work("root", d)
    r = w.run(Recipe("sh", "stdio rpath wpath cpath proc exec", {}), ["sh", "-c", PROBES])
    assert r.status == 0, r
    fixes = {x["path"]: x["fix"] for x in r.of_kind("denied") if x["source"] == "landlock"}
    assert fixes.get("/tmp") == "add '/tmp: wc' or the promise 'tmppath', which brings it", fixes
    assert fixes.get("/etc/resolv.conf") == (
        "add '/etc/resolv.conf: r' or the promise 'dns', which brings it"
    )
    assert fixes.get("/proc/meminfo") == (
        "add '/proc/meminfo: r' or the promise 'vminfo', which brings it"
    )
    pid_paths = [p for p in fixes if p.startswith("/proc/") and p.endswith("/status")]
    assert pid_paths and fixes[pid_paths[0]].startswith("add '/proc: r' or the promise 'ps'")
    assert "unveil refused openat /tmp (create a file): add '/tmp: wc' or the promise" in r.stderr
    # Without the sandbox the same script reads and writes all of it.
    p = subprocess.run(["sh", "-c", PROBES], capture_output=True, text=True, cwd=d)
    assert p.returncode == 0 and not p.stderr, p


def test_corpus_controls_read_the_same_from_landlock_records(
    tmp_path: Path, kernel_audit_on: None
) -> None:
    """gcc without a temporary directory and cp without 'c', as the kernel reports them."""
    d = tmp_path / "w"
    d.mkdir()
    w = Work("root", d)
    w.write("hello.c", "int main(void) { return 0; }\n")
    w.write("src/a.txt", "a")
    w.mkdir("out", "dst")
    r = w.run(Recipe("gcc", "stdio rpath wpath cpath fattr proc exec", {"hello.c": "r",
              "out": "rwc"}), ["gcc", "-o", "out/hello", "hello.c"])  # fmt: skip
    assert r.status != 0 and "Cannot create temporary file" in r.stderr, r
    tmp = [x for x in r.of_kind("denied") if x["path"] == "/tmp"]
    assert tmp and tmp[0]["source"] == "landlock", r.of_kind("denied")
    assert tmp[0]["fix"] == "add '/tmp: wc' or the promise 'tmppath', which brings it"
    r = w.run(Recipe("cp", "stdio rpath wpath cpath", {"src": "r", "dst": "rw"}),
              ["cp", "src/a.txt", "dst/"])  # fmt: skip
    assert r.status == 1, r
    fix = f"add '{d / 'dst'}: rwc'"
    assert f"unveil refused openat {d / 'dst'} (create a file): {fix}" in r.stderr, r.stderr


# --- ids one already has ------------------------------------------------------------------

IDS = """
import os
u, g = os.geteuid(), os.getegid()
os.setresuid(-1, u, -1); os.seteuid(u); os.setuid(os.getuid()); os.setreuid(u, u)
os.setresgid(g, g, g); os.setegid(g); os.setgid(os.getgid()); os.setregid(-1, g)
print("same ids", os.getresuid(), os.getresgid())
for f, a in ((os.setresuid, (-1, 12345, -1)), (os.setgid, (12345,))):
    try:
        f(*a); print(f.__name__, "changed")
    except OSError as e:
        print(f.__name__, "refused", e.errno)
"""


def test_setting_the_ids_one_has_needs_no_id(work: Work) -> None:
    r = work.run(_recipe("stdio rpath", violation="errno"), _python(IDS))
    assert r.status == 0, r
    uid = os.geteuid() if work.harness is None else work.harness.user.uid
    assert f"same ids ({uid}, {uid}, {uid})" in r.stdout, r
    assert "setresuid refused 1" in r.stdout and "setgid refused 1" in r.stdout, r
    assert [(v["syscall"], v["promise"]) for v in r.violations] == [
        ("setresuid", "id"),
        ("setgid", "id"),
    ], r.violations
    assert r.violations[0]["args"] == "-1, 12345, -1"
    # Under 'kill' too: the no-ops pass, the change kills naming 'id'.
    r = work.run(_recipe("stdio rpath"), _python(IDS))
    assert r.status == VIOLATION_EXIT and "setresuid(-1, 12345, -1) needs 'id'" in r.stderr, r
    # Unsandboxed, root changes its ids (CAP_SETUID): what the sandbox stops is real.
    p = work.host(_python(IDS))
    if work.harness is None:
        assert "setresuid changed" in p.stdout, p
    else:
        assert "setresuid refused 1" in p.stdout, p  # an ordinary user cannot anyway


def test_learn_proposes_no_id_for_the_ids_one_has(tmp_path: Path) -> None:
    """`sandbox learn` sees what the enforcing parent answers: no 'id' for a no-op; a real
    change of ids (root only: it needs CAP_SETUID to happen at all) does need it."""
    same = "import os; os.seteuid(os.geteuid()); os.setresgid(-1, os.getegid(), -1)"
    p = sandbox_cli("learn", "--", "/usr/bin/python3", "-c", same, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    pledge = p.stdout.split("unveil:")[0]
    assert "- rpath" in pledge and "- id" not in pledge, p.stdout
    if os.geteuid() == 0:
        change = "import os; os.setresuid(-1, 1, -1)"
        p = sandbox_cli("learn", "--", "/usr/bin/python3", "-c", change, cwd=tmp_path)
        assert "- id  # setresuid(-1, 1, -1)" in p.stdout, p.stdout


# --- stdio brings /dev/urandom ------------------------------------------------------------


def test_stdio_brings_dev_urandom_read_only(work: Work) -> None:
    sh = "head -c 16 /dev/urandom | wc -c; head -c 16 /dev/random | wc -c; head -c 1 /dev/zero"
    r = work.run(Recipe("sh", "stdio rpath proc exec", {}), ["sh", "-c", sh])
    assert r.stdout.split() == ["16", "16"], r
    assert "'/dev/zero' for reading: Permission denied" in r.stderr  # not brought
    write = work.run(Recipe("sh", "stdio rpath wpath cpath proc exec", {}),
                     ["sh", "-c", "echo x > /dev/urandom"])  # fmt: skip
    assert write.status != 0 and "Permission denied" in write.stderr, write
    p = work.host(["sh", "-c", sh])
    assert p.stdout == "16\n16\n\0" and p.returncode == 0, p


# --- messages: times and locks decoded -------------------------------------------------

_KEEP: list[ctypes.Array[ctypes.c_char]] = []


def _buf(data: bytes) -> int:
    b = ctypes.create_string_buffer(data, len(data))
    _KEEP.append(b)
    return ctypes.addressof(b)


def test_times_and_locks_are_decoded() -> None:
    me = os.getpid()

    def d(name: str, *args: int) -> str:
        return S.decode_args(name, list(args), pid=me)

    ts = _buf(struct.pack("=qqqq", 981173106, 5, 0, S.UTIME_NOW))
    path = _buf(b"dl/file.txt\0")
    assert d("utimensat", S.AT_FDCWD & 0xFFFFFFFF, path, ts, 0) == (
        'utimensat(AT_FDCWD, "dl/file.txt", [{tv_sec=981173106, tv_nsec=5}, UTIME_NOW], 0)'
    )
    omit = _buf(struct.pack("=qqqq", 0, S.UTIME_OMIT, 7, 8))
    assert d("utimensat", 6, 0, omit, 0) == (
        "utimensat(6, NULL, [UTIME_OMIT, {tv_sec=7, tv_nsec=8}], 0)"
    )
    assert d("utimensat", 6, path, 0, 0) == 'utimensat(6, "dl/file.txt", NULL, 0)'
    tv = _buf(struct.pack("=qqqq", 1, 2, 3, 4))
    assert d("utimes", path, tv) == (
        'utimes("dl/file.txt", [{tv_sec=1, tv_usec=2}, {tv_sec=3, tv_usec=4}])'
    )
    assert d("futimesat", 5, path, tv).startswith('futimesat(5, "dl/file.txt", [{tv_sec=1,')
    assert d("utime", path, _buf(struct.pack("=qq", 10, 20))) == (
        'utime("dl/file.txt", {actime=10, modtime=20})'
    )
    lock = _buf(struct.pack("=hh4xqqi4x", 1, 0, 1 << 30, 1, 0))
    assert d("fcntl", 4, S.F_SETLK, lock) == (
        "fcntl(4, F_SETLK, {l_type=F_WRLCK, l_whence=SEEK_SET, l_start=1073741824, l_len=1})"
    )
    assert d("fcntl", 4, S.F_OFD_GETLK, lock).startswith("fcntl(4, F_OFD_GETLK, {l_type=")
    # An unreadable pointer stays a pointer, never a guess.
    assert d("utimensat", 6, 0, 0x10, 0) == "utimensat(6, NULL, 0x10, 0)"
    assert d("fcntl", 4, S.F_SETFD, 1) == "fcntl(4, F_SETFD, 0x1)"


def test_fix_for_keeps_its_old_form_without_a_pledge() -> None:
    """Callers that pass no pledge (older ones) get the fixes they always got."""
    r = denials.Refusal(("fs.read_file",), syscall="openat", path="/etc/gitconfig")
    assert denials.fix_for(r, (Unveil("/etc", frozenset("x")),)) == (
        "unveil refused openat /etc/gitconfig (read)",
        "add '/etc/gitconfig: r'",
    )


# --- glibc's resolver socket names dns --------------------------------------------------

RESOLVER_SOCKET = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
print("made", s.type & 0xF)
"""


def test_the_resolver_socket_names_dns_not_inet(work: Work) -> None:
    """git clone without an identity asks for the host's name: with 'getpw' held, glibc's
    next step is the resolver's nonblocking UDP socket, which the rows alone word 'inet'."""
    r = work.run(_recipe("stdio rpath getpw"), _python(RESOLVER_SOCKET))
    assert r.status == VIOLATION_EXIT, r
    assert (
        "socket(AF_INET, SOCK_DGRAM|SOCK_NONBLOCK|SOCK_CLOEXEC, 0) needs 'dns' (a name lookup, "
        "glibc's resolver asking the nameserver; 'inet' for other datagrams)"
    ) in r.stderr, r.stderr
    assert r.violations[-1]["promise"] == "dns"
    # The fix named works (the socket is made; no query is sent), as it does unsandboxed.
    r = work.run(_recipe("stdio rpath getpw dns"), _python(RESOLVER_SOCKET))
    assert r.status == 0 and r.stdout == "made 2\n", r
    assert work.host(_python(RESOLVER_SOCKET)).stdout == "made 2\n"
    # A plain datagram socket (no SOCK_NONBLOCK: not the resolver's) still names inet.
    plain = RESOLVER_SOCKET.replace(" | socket.SOCK_NONBLOCK", "")
    r = work.run(_recipe("stdio rpath getpw"), _python(plain))
    assert r.violations[-1]["promise"] == "inet", r.violations
