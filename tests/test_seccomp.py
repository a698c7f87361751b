"""The filter compiler on the real kernel: each test forks a child, which sets
no_new_privs, installs a filter built from the promise table, makes calls, and reports
through a pipe on fd 3 (the broker fd, which ALWAYS lets it write). The parent asserts.
"""

from __future__ import annotations

import array  # noqa: F401  (socket.send_fds imports it: must happen before the filter)
import ctypes
import errno
import mmap
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox.enforce import promises as P
from sandbox.enforce import seccomp as sc
from sandbox.enforce.rules import Arg, Rule, match
from sandbox.protocol import BROKER_FD

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_HANG_GUARD = 60.0  # seconds; only a guard against a stuck child, not a timing assertion


def nr(name: str) -> int:
    n = sc.syscall_number(name)
    assert n is not None, name
    return n


def raw(name_or_nr: str | int, *args: int) -> int:
    """The system call itself (no libc wrapper logic): its result, or -errno."""
    n = nr(name_or_nr) if isinstance(name_or_nr, str) else name_or_nr
    cargs = [ctypes.c_long(a - (1 << 64) if a >= 1 << 63 else a) for a in args]
    ctypes.set_errno(0)
    r = int(_libc.syscall(ctypes.c_long(n), *cargs))
    return -ctypes.get_errno() if r == -1 else r


@dataclass
class Outcome:
    result: Any = None
    signal: int | None = None
    exitcode: int | None = None

    @property
    def killed_by_sigsys(self) -> bool:
        return self.signal == signal.SIGSYS


def run_filtered(
    fn: Callable[[], Any],
    promises: Iterable[str],
    *,
    violation: sc.ViolationAction = "errno",
    never_action: sc.NeverAction = "kill",
    setup: Callable[[], Any] | None = None,
    rules: list[Rule] | None = None,
    listener_to: socket.socket | None = None,
    on_listener: Callable[[int, int], Any] | None = None,
    unfiltered: bool = False,
) -> Outcome:
    """Run fn() in a forked child under the filter for `promises`; return what it returned.

    setup() runs before the filter is installed; its result is passed to nothing, it only
    prepares state (files, fds, executable pages). With `listener_to`, the child sends
    the listener fd over that socket, and on_listener(fd, child_pid) runs in the parent.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            os.dup2(w, BROKER_FD)
            if setup is not None:
                setup()
            assert _libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
            if unfiltered:  # a control: the same code without a filter
                os.write(BROKER_FD, pickle.dumps(fn()))
                os._exit(0)
            filt = sc.build_filter(
                P.rules_for(promises) if rules is None else rules,
                violation=violation,
                self_pid=os.getpid(),
                never_action=never_action,
            )
            lfd = sc.install(filt, listener=listener_to is not None)
            if listener_to is not None:
                assert lfd is not None
                socket.send_fds(listener_to, [b"L"], [lfd])
            result = fn()
            os.write(BROKER_FD, pickle.dumps(result))
        except BaseException as e:  # report everything, the parent asserts
            try:
                os.write(BROKER_FD, pickle.dumps(("EXC", repr(e))))
            finally:
                status = 99
        finally:
            os._exit(status)
    os.close(w)
    if on_listener is not None:
        assert listener_to is not None
        on_listener(pid, r)
    data = b""
    while True:
        ready, _, _ = select.select([r], [], [], _HANG_GUARD)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out = Outcome()
    if os.WIFSIGNALED(status):
        out.signal = os.WTERMSIG(status)
    else:
        out.exitcode = os.WEXITSTATUS(status)
    if data:
        out.result = pickle.loads(data)
    return out


def allowed(out: Outcome) -> bool:
    """The call ran: the child finished and the kernel did not refuse it with EPERM."""
    assert out.signal is None, f"killed by signal {out.signal}"
    assert out.exitcode == 0, out.result
    return out.result != -errno.EPERM


def refused(out: Outcome) -> bool:
    assert out.signal is None, f"killed by signal {out.signal}"
    assert out.exitcode == 0, out.result
    return bool(out.result == -errno.EPERM)


# --- architecture ---------------------------------------------------------------------------


def _int80_page() -> Callable[[], int]:
    """An executable page with `mov eax, 20 (i386 getpid); int 0x80; ret`, made before the
    filter is installed (the filter itself would refuse an anonymous executable page)."""
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
    _keep.append((page, fn))
    return lambda: int(fn())


_keep: list[Any] = []


def test_int80_without_filter_reaches_the_kernel() -> None:
    # the control for the next test: without a filter, i386 getpid via int 0x80 works
    out = run_filtered(lambda: _int80_page()(), [], unfiltered=True)
    if out.signal == signal.SIGSEGV:
        pytest.skip("kernel without IA32 emulation: int 0x80 faults before seccomp")
    assert out.result is not None and out.result > 0


def test_int80_is_killed() -> None:
    holder: list[Callable[[], int]] = []
    out = run_filtered(
        lambda: holder[0](), P.PROMISE_NAMES, setup=lambda: holder.append(_int80_page())
    )
    assert out.killed_by_sigsys


def test_x32_syscall_number_is_killed() -> None:
    x32_getpid = 0x40000000 | 39
    # control: without a filter the call reaches the kernel (ENOSYS if x32 is not built in)
    assert raw(x32_getpid) in (os.getpid(), -errno.ENOSYS)
    out = run_filtered(lambda: raw(x32_getpid), P.PROMISE_NAMES)
    assert out.killed_by_sigsys
    # the native number of the same call is allowed by the same filter
    assert run_filtered(lambda: raw(39), P.PROMISE_NAMES).result > 0


# --- actions ----------------------------------------------------------------------------------


def test_errno_mode_refuses_with_eperm_and_goes_on() -> None:
    out = run_filtered(lambda: (raw("getpriority", 0, 0), raw("getppid")), {"stdio"})
    assert out.result == (-errno.EPERM, os.getpid())


def test_kill_mode_kills_with_sigsys() -> None:
    out = run_filtered(lambda: raw("getpriority", 0, 0), {"stdio"}, violation="kill")
    assert out.killed_by_sigsys
    assert run_filtered(lambda: raw("getppid"), {"stdio"}, violation="kill").result == os.getpid()


def test_log_mode_lets_the_call_run() -> None:
    out = run_filtered(lambda: raw("getpriority", 0, 0), {"stdio"}, violation="log")
    assert out.result is not None and out.result >= 0


def test_enosys_rule() -> None:
    # openat2 is failed with ENOSYS under rpath so that libc falls back to openat
    out = run_filtered(lambda: raw("openat2", 0, 0, 0, 0), {"stdio", "rpath"})
    assert out.result == -errno.ENOSYS
    assert refused(run_filtered(lambda: raw("openat2", 0, 0, 0, 0), {"stdio"}))


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("io_uring_setup", (1, 0)),
        ("ptrace", (0, 0, 0, 0)),  # PTRACE_TRACEME
        ("bpf", (0, 0, 0)),
        ("unshare", (0,)),
        ("userfaultfd", (0,)),
        ("keyctl", (0, 0)),
        ("perf_event_open", (0, 0, -1, -1, 0)),
        ("pidfd_getfd", (0, 0, 0)),
        ("process_vm_readv", (1, 0, 0, 0, 0, 0)),
    ],
)
def test_never_calls_are_killed_whatever_is_promised(call: str, args: tuple[int, ...]) -> None:
    # errno mode, every promise: a NEVER call still ends the process (never_action kill)
    out = run_filtered(lambda: raw(call, *args), P.PROMISE_NAMES, violation="errno")
    assert out.killed_by_sigsys


def test_tiocsti_is_never_allowed_even_with_tty() -> None:
    fds: list[int] = []
    out = run_filtered(
        lambda: raw("ioctl", fds[1], 0x5412, ctypes.addressof(ctypes.c_char(b"x"))),
        P.PROMISE_NAMES,
        setup=lambda: fds.extend(os.openpty()),
    )
    assert out.killed_by_sigsys
    # upper bits do not hide it either (the kernel drops them for the int argument)
    out = run_filtered(
        lambda: raw("ioctl", fds[1], (1 << 32) | 0x5412, 0),
        P.PROMISE_NAMES,
        setup=lambda: fds.extend(os.openpty()),
    )
    assert out.signal is not None or out.result == -errno.EPERM


def test_broker_fd_is_always_reachable() -> None:
    # no promise at all: writing to fd 3 (the report itself) still works
    out = run_filtered(lambda: raw("getppid"), [], violation="errno")
    assert out.result == -errno.EPERM


# --- notify -----------------------------------------------------------------------------------


def _serve(
    answer: Callable[[int, sc.Notification], None], parent_sock: socket.socket, seen: list[Any]
) -> Callable[[int, int], None]:
    def on_listener(_pid: int, _r: int) -> None:
        ready, _, _ = select.select([parent_sock], [], [], _HANG_GUARD)
        if not ready:
            os.kill(_pid, signal.SIGKILL)
            raise AssertionError("the child did not send its listener")
        _, fds, _, _ = socket.recv_fds(parent_sock, 16, 1)
        (lfd,) = fds
        try:
            while True:
                ready, _, _ = select.select([lfd, _r], [], [], _HANG_GUARD)
                if not ready or _r in ready:
                    return  # the child finished: it reported (or died, the pipe is at EOF)
                n = sc.recv_notification(lfd)
                if n is None:
                    continue
                seen.append(n)
                answer(lfd, n)
        finally:
            os.close(lfd)

    return on_listener


def test_notify_parent_decodes_and_answers_eperm() -> None:
    seen: list[sc.Notification] = []
    a, b = socket.socketpair()

    def answer(lfd: int, n: sc.Notification) -> None:
        assert sc.id_valid(lfd, n.id)
        assert sc.respond(lfd, n.id, error=errno.EPERM)

    out = run_filtered(
        lambda: raw("getpriority", 0, 4242),
        {"stdio"},
        violation="notify",
        listener_to=b,
        on_listener=_serve(answer, a, seen),
    )
    assert out.result == -errno.EPERM
    calls = [n for n in seen if n.syscall == "getpriority"]
    assert calls, [n.syscall for n in seen]
    n = calls[0]
    assert n.arch == sc.AUDIT_ARCH_X86_64
    assert n.args[:2] == (0, 4242)
    assert P.promise_for(n.syscall, n.args) in ("proc", "ps")


def test_notify_continue_lets_the_call_run(tmp_path: Any) -> None:
    seen: list[sc.Notification] = []
    a, b = socket.socketpair()
    target = str(tmp_path / "made-by-continue")

    def answer(lfd: int, n: sc.Notification) -> None:
        if n.syscall == "mkdir":
            assert sc.respond(lfd, n.id, continue_=True)
        else:
            assert sc.respond(lfd, n.id, error=errno.EPERM)

    path = ctypes.create_string_buffer(target.encode())
    out = run_filtered(
        lambda: raw("mkdir", ctypes.addressof(path), 0o700),
        {"stdio"},
        violation="notify",
        listener_to=b,
        on_listener=_serve(answer, a, seen),
    )
    assert out.result == 0
    assert os.path.isdir(target)
    assert any(n.syscall == "mkdir" for n in seen)


def test_respond_to_a_dead_target_returns_false() -> None:
    a, b = socket.socketpair()
    results: list[bool] = []

    def answer(lfd: int, n: sc.Notification) -> None:
        os.kill(n.pid, signal.SIGKILL)
        os.waitid(os.P_PID, n.pid, os.WEXITED | os.WNOWAIT)
        results.append(sc.id_valid(lfd, n.id))
        results.append(sc.respond(lfd, n.id, error=errno.EPERM))

    out = run_filtered(
        lambda: raw("getpriority", 0, 0),
        {"stdio"},
        violation="notify",
        listener_to=b,
        on_listener=_serve(answer, a, []),
    )
    assert out.signal == signal.SIGKILL
    assert results == [False, False]


def test_dns_connect_goes_to_the_parent_without_inet() -> None:
    seen: list[sc.Notification] = []
    a, b = socket.socketpair()

    def answer(lfd: int, n: sc.Notification) -> None:
        assert sc.respond(lfd, n.id, error=errno.EACCES)

    def connect() -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr = bytes([2, 0, 0, 53, 127, 0, 0, 1]) + bytes(8)  # sockaddr_in 127.0.0.1:53
        buf = ctypes.create_string_buffer(addr, len(addr))
        return raw("connect", s.fileno(), ctypes.addressof(buf), len(addr))

    out = run_filtered(
        connect, {"stdio", "dns"}, violation="errno", listener_to=b,
        on_listener=_serve(answer, a, seen),
    )  # fmt: skip
    assert out.result == -errno.EACCES  # the parent's answer, not the kernel's
    (n,) = [n for n in seen if n.syscall == "connect"]
    rule = match(P.rules_for({"stdio", "dns"}), "connect", n.args)
    assert rule is not None and rule.handler == "dns"
    # with inet, connect is the kernel's business: no notification, a real connect
    assert match(P.rules_for({"stdio", "dns", "inet"}), "connect", n.args) == Rule("connect")


# --- compiler errors (fail closed) ---------------------------------------------------------


def test_unknown_syscall_is_a_build_error() -> None:
    with pytest.raises(sc.FilterError, match="no_such_call"):
        sc.build_filter([Rule("no_such_call")], violation="kill", self_pid=1)


def test_two_conditions_on_one_argument_are_refused() -> None:
    rule = Rule("openat", (Arg(2, "masked_eq", 0, 3), Arg(2, "masked_eq", 0, 0o100)))
    with pytest.raises(sc.FilterError, match="argument 2"):
        sc.build_filter([rule], violation="kill", self_pid=1)


def test_unconditional_notify_hiding_conditional_allow_is_refused() -> None:
    rules = [Rule("connect", action="notify", handler="x"), Rule("connect", (Arg(0, "eq", 3),))]
    with pytest.raises(sc.FilterError, match="hide"):
        sc.build_filter(rules, violation="kill", self_pid=1)


def test_never_call_in_rules_is_refused() -> None:
    with pytest.raises(sc.FilterError, match="ptrace"):
        sc.build_filter([Rule("ptrace")], violation="kill", self_pid=1)


def test_install_requires_no_new_privs() -> None:
    code = (
        "from sandbox.enforce import seccomp as sc, promises as P\n"
        "from sandbox.errors import SetupError\n"
        "f = sc.build_filter(P.rules_for({'stdio'}), violation='kill', self_pid=1)\n"
        "try:\n    sc.install(f, listener=False)\n"
        "except SetupError as e:\n    print('refused', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("refused")


def test_hot_calls_have_no_argument_checks() -> None:
    pfc = sc.export_pfc(P.rules_for({"stdio", "rpath"}))
    for call in ("read", "write", "close", "futex", "getppid", "fstat", "lseek", "brk"):
        lines = pfc.splitlines()
        (i,) = [k for k, line in enumerate(lines) if f'syscall "{call}"' in line]
        # the rule is "if ($syscall == N) action ALLOW;" with no argument test in between
        assert "action ALLOW" in lines[i + 2], lines[i : i + 4]


def test_syscall_names() -> None:
    assert sc.syscall_name(0) == "read"
    assert sc.syscall_name(257) == "openat"
    assert sc.syscall_name(462) == "mseal"  # newer than libseccomp 2.5.4: our table
    assert sc.syscall_name(99999) == "syscall_99999"
    assert sc.syscall_number("openat") == 257
    assert sc.syscall_number("socketcall") is None  # not on x86-64


# --- a real dynamically linked program -------------------------------------------------------


@pytest.mark.parametrize("violation", ["errno", "kill"])
def test_ls_runs_under_stdio_rpath_exec(violation: sc.ViolationAction) -> None:
    r, w = os.pipe()

    def run_ls() -> None:
        os.dup2(w, 1)
        os.execv("/bin/ls", ["ls", "/usr"])

    out = run_filtered(run_ls, {"stdio", "rpath", "exec"}, violation=violation)
    os.close(w)
    listing = os.read(r, 65536).decode()
    os.close(r)
    assert out.exitcode == 0 and out.signal is None
    assert "bin" in listing.split()
    # without exec the same program cannot start
    out = run_filtered(run_ls, {"stdio", "rpath"}, violation="kill")
    assert out.killed_by_sigsys


def test_python_runs_under_stdio_rpath_exec_in_kill_mode() -> None:
    r, w = os.pipe()

    def run_py() -> None:
        os.dup2(w, 1)
        os.execv(sys.executable, [sys.executable, "-c", "import json; print(json.dumps([1]))"])

    out = run_filtered(run_py, {"stdio", "rpath", "exec"}, violation="kill")
    os.close(w)
    text = os.read(r, 65536).decode()
    os.close(r)
    assert (out.exitcode, out.signal, text) == (0, None, "[1]\n")
