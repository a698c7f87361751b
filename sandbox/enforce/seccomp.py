"""Compile promise rules into a seccomp filter (libseccomp via pyseccomp), install it, and
speak the user-notification protocol on a raw listener fd.

libseccomp writes the BPF: architecture checks (foreign architectures and x32 numbers get
KILL_PROCESS), argument comparisons on 64-bit values, and a layout in which calls without
argument checks have a constant action, so the kernel's per-filter action cache makes
them nearly free (read, write, futex, getppid, ...).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sandbox import libc
from sandbox.enforce import filtercache, hygiene
from sandbox.enforce.promises import NEVER, NEVER_ARGS
from sandbox.enforce.rules import SELF_PID, Rule
from sandbox.errors import SetupError
from sandbox.plain import plain

if TYPE_CHECKING:
    import pyseccomp

ViolationAction = Literal["notify", "kill", "errno", "log"]
NeverAction = Literal["notify", "kill", "errno"]

# A policy's `violation:` as the kernel's own action, where no listener decides (library
# use, narrowing pledges, best_effort without user notification); unknown -> kill.
KERNEL_ACTIONS: dict[str, ViolationAction] = {"kill": "kill", "errno": "errno", "log": "log"}
# ... and the action for never-allowed calls then: they are never performed, so under
# `log` too they fail with EPERM; only `kill` kills.
NEVER_KERNEL_ACTIONS: dict[str, NeverAction] = {"kill": "kill", "errno": "errno", "log": "errno"}


# --- loading pyseccomp quickly ----------------------------------------------------------------

_FAST_NAMES = {"seccomp": "libseccomp.so.2", "c": "libc.so.6"}


def _import_pyseccomp() -> Any:
    """Import pyseccomp without the cost of ctypes.util.

    pyseccomp resolves its libraries with ctypes.util.find_library, which forks
    /sbin/ldconfig -p (~35 ms), and importing ctypes.util itself pulls in subprocess and
    shutil (~4 ms): paid on every launch. The sonames of libseccomp and glibc are stable
    ABI names, so during the import a stand-in ctypes.util hands them to dlopen directly;
    it is removed afterwards, so a later `import ctypes.util` gets the real module. If
    dlopen of a soname fails (an unusual layout), pyseccomp is imported the general way.
    """
    import sys
    import types

    if "pyseccomp" in sys.modules:
        return sys.modules["pyseccomp"]
    if "ctypes.util" in sys.modules:  # already paid for: just skip the ldconfig fork
        real = sys.modules["ctypes.util"].find_library
        stand_in = None
    else:
        real = None
        stand_in = types.ModuleType("ctypes.util")
        sys.modules["ctypes.util"] = stand_in
        ctypes.util = stand_in  # as the import system would

    def fast(name: str) -> str | None:
        if name in _FAST_NAMES:
            return _FAST_NAMES[name]
        import ctypes.util as cu  # an unexpected name: the real lookup

        return cu.find_library(name) if cu is not stand_in else None

    holder = stand_in or sys.modules["ctypes.util"]
    holder.find_library = fast  # type: ignore[attr-defined]
    try:
        mod = _run_read_code() if _read_code is not None else _plain_import()
    except OSError:
        sys.modules.pop("pyseccomp", None)
        mod = None
    finally:
        if stand_in is not None:
            del sys.modules["ctypes.util"]
            if getattr(ctypes, "util", None) is stand_in:
                del ctypes.util
        else:
            holder.find_library = real  # type: ignore[attr-defined]
    return _plain_import() if mod is None else mod


def _plain_import() -> Any:
    import pyseccomp

    return pyseccomp


# pyseccomp's spec and code object, read by read_pyseccomp() before a view is locked and
# run only if a filter must be built (a cached program never needs pyseccomp).
_read_code: tuple[Any, Any] | None = None


def _run_read_code() -> Any:
    import sys
    import types

    assert _read_code is not None
    spec, code = _read_code
    mod = types.ModuleType(spec.name)
    mod.__spec__, mod.__loader__, mod.__file__ = spec, spec.loader, spec.origin
    sys.modules[spec.name] = mod
    try:
        exec(code, mod.__dict__)  # what `import pyseccomp` would run, from what was read
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return mod


def read_pyseccomp() -> None:
    """Read now what importing pyseccomp later needs from files (its code object, the
    libraries it loads, the modules it imports) without running its module (~1.4 ms): for
    pledge()/unveil() in a running process, whose view is about to be locked and which,
    with a cached program, never needs pyseccomp at all. Anything unexpected: import it."""
    global _read_code
    if _ps is not None or _read_code is not None:
        return
    import importlib.machinery
    import typing  # noqa: F401  # pyseccomp's own imports, loaded while they can be read
    import weakref  # noqa: F401

    try:
        spec = importlib.machinery.PathFinder.find_spec("pyseccomp")
        if spec is None or spec.loader is None or spec.origin is None:
            raise ImportError("pyseccomp not found on the path")
        code = spec.loader.get_code("pyseccomp")  # type: ignore[attr-defined]
        for soname in _FAST_NAMES.values():
            ctypes.CDLL(soname)  # mapped now: a later dlopen by name finds it loaded
    except (ImportError, OSError, AttributeError):
        _lib()
        return
    _read_code = (spec, code)


_ps: Any = None


def _lib() -> Any:
    global _ps
    if _ps is None:
        _ps = _import_pyseccomp()
    return _ps


_seccomp_so: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    """libseccomp itself, for the facts a cached program is keyed by (version, API level,
    native architecture), without importing pyseccomp."""
    global _seccomp_so
    if _seccomp_so is None:
        try:
            _seccomp_so = ctypes.CDLL(_FAST_NAMES["seccomp"])
        except OSError:  # an unusual layout: pyseccomp's own lookup found it
            _seccomp_so = _lib()._libseccomp
        _seccomp_so.seccomp_arch_native.restype = ctypes.c_uint32
        _seccomp_so.seccomp_api_get.restype = ctypes.c_uint
        _seccomp_so.seccomp_syscall_resolve_name.restype = ctypes.c_int
        _seccomp_so.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return _seccomp_so


# --- syscall names ------------------------------------------------------------------------------

# x86-64 numbers of calls newer than the libseccomp on the machine may know (2.5.4 stops at
# 454). The kernel's numbers are ABI and never change.
_X86_64_EXTRA: dict[str, int] = {
    "fchmodat2": 452,
    "map_shadow_stack": 453,
    "futex_wake": 454,
    "futex_wait": 455,
    "futex_requeue": 456,
    "statmount": 457,
    "listmount": 458,
    "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460,
    "lsm_list_modules": 461,
    "mseal": 462,
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_getattr": 468,
    "file_setattr": 469,
}
_X86_64_EXTRA_BY_NR = {v: k for k, v in _X86_64_EXTRA.items()}

# Names in the table that may be absent on this architecture (x86-64 has them all; these
# are skipped rather than refused if the running libseccomp or arch lacks them).
OPTIONAL_SYSCALLS: frozenset[str] = frozenset(
    {"vm86", "nfsservctl", "uselib", "futex_waitv", "epoll_pwait2", "memfd_secret"}
)


class FilterError(SetupError):
    """The rules cannot be compiled as written (a defect in the table, not in the policy)."""


def syscall_number(name: str) -> int | None:
    """The native number of `name`, or None if this architecture has no such call."""
    nr = int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))
    if nr >= 0:
        return nr
    return _X86_64_EXTRA.get(name) if _is_x86_64() else None


def syscall_name(nr: int) -> str:
    """The native name of call number `nr` ("syscall_123" if unknown)."""
    if _is_x86_64() and nr in _X86_64_EXTRA_BY_NR:
        return _X86_64_EXTRA_BY_NR[nr]
    try:
        return bytes(_lib().resolve_syscall(_lib().Arch.NATIVE, nr)).decode()
    except ValueError:
        return f"syscall_{nr}"


AUDIT_ARCH_X86_64 = 0xC000003E


def native_arch() -> int:
    return int(_libseccomp().seccomp_arch_native())


def _is_x86_64() -> bool:
    return native_arch() == AUDIT_ARCH_X86_64


# --- compiling ----------------------------------------------------------------------------------

_OPS = {"eq": 4, "ne": 1, "lt": 2, "le": 3, "gt": 6, "ge": 5, "masked_eq": 7}
_U64 = 0xFFFFFFFFFFFFFFFF


def _action_value(action: str) -> int:
    ps = _lib()
    table: dict[str, Callable[[], int]] = {
        "allow": lambda: int(ps.ALLOW),
        "enosys": lambda: int(ps.ERRNO(errno.ENOSYS)),
        "notify": lambda: int(ps.NOTIFY),
        "kill": lambda: int(ps.KILL_PROCESS),
        "errno": lambda: int(ps.ERRNO(errno.EPERM)),
        "log": lambda: int(ps.LOG),
    }
    return table[action]()


def _convert_args(rule: Rule, self_pid: int) -> list[Any]:
    ps = _lib()
    seen: set[int] = set()
    out = []
    for a in rule.args:
        if not 0 <= a.index <= 5:
            raise FilterError(f"{rule.syscall}: argument index {a.index} is not 0-5")
        if a.index in seen:
            # libseccomp refuses two comparisons on one argument: combine them into one mask
            raise FilterError(f"{rule.syscall}: two conditions on argument {a.index}")
        seen.add(a.index)
        value = self_pid if a.value == SELF_PID else a.value
        if a.op == "masked_eq":
            # libseccomp's MASKED_EQ takes (mask, value)
            out.append(ps.Arg(a.index, _OPS[a.op], a.mask & _U64, value & _U64))
        else:
            out.append(ps.Arg(a.index, _OPS[a.op], value & _U64))
    return out


def _plan(rules: Sequence[Rule]) -> dict[str, list[Rule]]:
    """Rules by call, reduced to what libseccomp can express without changing the meaning.

    An unconditional allow supersedes every other rule on its call. An unconditional
    notify/enosys next to conditional rules of another action is refused: libseccomp would
    keep the unconditional one and silently drop the others.
    """
    by_call: dict[str, list[Rule]] = {}
    for rule in dict.fromkeys(rules):
        by_call.setdefault(rule.syscall, []).append(rule)
    for name, group in by_call.items():
        if any(not r.args and r.action == "allow" for r in group):
            by_call[name] = [Rule(name)]
            continue
        bare = {r.action for r in group if not r.args}
        if len(bare) > 1 or (bare and any(r.action not in bare for r in group)):
            raise FilterError(
                f"{name}: an unconditional {'/'.join(sorted(bare))} rule would hide the "
                "conditional rules of another action on the same call"
            )
        if bare:
            by_call[name] = [r for r in group if not r.args][:1]
    return by_call


def build_filter(
    rules: Sequence[Rule],
    *,
    violation: ViolationAction,
    self_pid: int,
    never_action: NeverAction = "kill",
) -> pyseccomp.SyscallFilter:
    """A filter for the native architecture allowing exactly `rules`.

    Calls no rule matches get the violation action (notify: the parent decides; kill:
    KILL_PROCESS; errno: EPERM; log: allowed and logged). NEVER calls get `never_action`.
    Any other architecture, and x32 numbers, get KILL_PROCESS. Unknown call names are an
    error (fail closed) unless in OPTIONAL_SYSCALLS.
    """
    ps = _lib()
    filt = ps.SyscallFilter(_action_value(violation))
    filt.set_attr(ps.Attr.ACT_BADARCH, ps.KILL_PROCESS)
    # no_new_privs is the caller's job (install() checks it); libseccomp must not set it
    # behind our back, so that a missing PR_SET_NO_NEW_PRIVS is seen, not papered over.
    filt.set_attr(ps.Attr.CTL_NNP, 0)
    # Binary search over call numbers; an older libseccomp keeps a linear list (same meaning).
    with contextlib.suppress(OSError):
        filt.set_attr(ps.Attr.CTL_OPTIMIZE, 2)

    def resolve(name: str) -> int | None:
        nr = syscall_number(name)
        if nr is None and name not in OPTIONAL_SYSCALLS:
            raise FilterError(f"unknown system call {name!r} on this architecture")
        return nr

    # A rule whose action is the default action changes nothing in the kernel (libseccomp
    # even refuses it); with the default 'notify' such rules are decided by the parent,
    # which reads them from the rule list itself.
    default = _action_value(violation)
    plan = _plan([r for r in rules if _action_value(r.action) != default])
    clash = sorted(set(plan) & set(NEVER))
    if clash:
        raise FilterError(f"never-allowed calls in the rules: {', '.join(clash)}")
    never_value = _action_value(never_action)
    default_value = _action_value(violation)
    # libseccomp refuses (EACCES) rules whose action is the default action; they are
    # redundant then: the default already does it.
    never_rules = never_value != default_value
    for name in NEVER if never_rules else ():
        nr = resolve(name)
        if nr is not None:
            filt.add_rule(never_value, nr)
    for rule, _why in NEVER_ARGS if never_rules else ():
        nr = resolve(rule.syscall)
        if nr is not None:
            filt.add_rule(never_value, nr, *_convert_args(rule, self_pid))
    for name, group in plan.items():
        nr = resolve(name)
        if nr is None:
            continue
        for rule in group:
            try:
                filt.add_rule(_action_value(rule.action), nr, *_convert_args(rule, self_pid))
            except OSError as e:
                raise FilterError(f"libseccomp refused the rule {rule}: {e}") from e
    return filt


# --- compiled programs, from the cache where they can be ----------------------------------------

# The installing process's pid (SELF_PID in the rules) reaches the program only as the k of
# a JEQ on an argument's low word. Built with two placeholders above any pid (pid_max is at
# most 2^22), the instructions where the builds differ are exactly those slots, and a
# cached program serves every process: the slots get its pid at load.
_PID_A, _PID_B = 0x3FFFFFF7, 0x3FFFFFF9
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_builder: bytes | None = None


def program(
    rules: Sequence[Rule],
    *,
    violation: ViolationAction,
    self_pid: int,
    never_action: NeverAction = "kill",
    cache: bool = True,
    files: bool = True,
) -> bytes:
    """The BPF program of build_filter(rules, ...) for process `self_pid`, from the compiled-
    filter cache (sandbox.enforce.filtercache) where the caller may use it, else built.

    The cache is used only by a process under no seccomp filter yet (under one, the calls
    it takes may not be allowed; pass cache=False where even the check of that is one call
    too many, as a narrowing pledge does). With files=False (a view already locked) only
    the entries prefetch() read beforehand are looked at. A miss builds the program (and
    stores it, with files).
    """
    if cache and not _filtered():
        try:
            found = _cached(rules, violation, never_action, self_pid, files)
        except OSError:  # a view that hides the cache (Landlock), an unreadable module file
            found = None
        if found is not None:
            return found
    return to_bpf(
        build_filter(rules, violation=violation, self_pid=self_pid, never_action=never_action)
    )


_prefetched: dict[bytes, bytes] = {}  # read at a view's lock, verified when used
_ready: dict[bytes, filtercache.Entry] = {}  # verified (or made) by warm() in this process


def prepare_cache() -> None:
    """Compute now what every cached program() needs (this module's identity, the keyring's
    secret): a warm launcher does it once for all its launches."""
    with contextlib.suppress(OSError):
        _builder_identity()
        filtercache.secret()


def prefetch() -> None:
    """Read what program() will need from files, for a process about to lock its view
    (Landlock) before it builds its filter: the recent cache entries, this module's
    identity. Every failure just means no cache later."""
    global _prefetched
    if _filtered():
        return
    try:
        _builder_identity()
        _prefetched = filtercache.prefetch()
    except OSError:
        _prefetched = {}


def warm(rules: Sequence[Rule], violation: ViolationAction, never_action: NeverAction) -> None:
    """Make sure the cache holds the program for `rules` (for a process that builds it
    after it has hidden the cache from itself: the entry is kept for program(files=False)
    in this process too). Every failure just means no cache."""
    if _filtered():
        return
    with contextlib.suppress(OSError):
        key = cache_key(rules, violation=violation, never_action=never_action)
        entry = filtercache.load(key)
        if entry is None:
            entry = _template(rules, violation, never_action)
            if entry is not None:
                filtercache.store(key, entry)
        if entry is not None:
            _ready[key] = entry


def _cached(
    rules: Sequence[Rule],
    violation: ViolationAction,
    never_action: NeverAction,
    self_pid: int,
    files: bool,
) -> bytes | None:
    if not files and not _prefetched and not _ready:
        return None
    key = cache_key(rules, violation=violation, never_action=never_action)
    entry = _ready.get(key)
    early = _prefetched.get(key) if entry is None else None
    mac_key = filtercache.secret() if early is not None else None
    if early is not None and mac_key is not None:
        entry = filtercache.decode(key, early, mac_key)
    if entry is None and files:
        entry = filtercache.load(key)
        if entry is None:
            entry = _template(rules, violation, never_action)
            if entry is not None:
                filtercache.store(key, entry)
    return None if entry is None else with_pid(entry, self_pid)


def _filtered() -> bool:
    import prctl

    try:
        return bool(prctl.get_seccomp())
    except OSError:
        return True


def _builder_identity() -> bytes:
    """What, besides the rules, decides the program: architecture, libseccomp's version and
    API level, pyseccomp's code and this module's own (how rules become a filter). Read from
    libseccomp and the two files, without importing pyseccomp."""
    global _builder
    if _builder is None:

        class Version(ctypes.Structure):
            _fields_ = [
                ("major", ctypes.c_uint),
                ("minor", ctypes.c_uint),
                ("micro", ctypes.c_uint),
            ]

        so = _libseccomp()
        fn = so.seccomp_version
        fn.restype = ctypes.POINTER(Version)
        v = fn().contents
        digest = filtercache.sha256()
        for path in (__file__, _pyseccomp_file()):
            with open(path, "rb") as f:
                digest.update(f.read())
        _builder = (
            f"arch={native_arch()} libseccomp={v.major}.{v.minor}.{v.micro} "
            f"api={so.seccomp_api_get()} code="
        ).encode() + digest.digest()
    return _builder


def _pyseccomp_file() -> str:
    import sys

    if "pyseccomp" in sys.modules:
        return str(sys.modules["pyseccomp"].__file__)
    if _read_code is not None:
        return str(_read_code[0].origin)
    import importlib.machinery

    spec = importlib.machinery.PathFinder.find_spec("pyseccomp")
    if spec is None or spec.origin is None:
        return str(_lib().__file__)
    return spec.origin


def _canonical(rule: Rule) -> bytes:
    # What the compiler reads of a rule (handler and `also` do not reach the kernel).
    args = ";".join(f"{a.index},{a.op},{a.value},{a.mask}" for a in rule.args)
    return f"{rule.syscall}|{rule.action}|{args}\n".encode()


def cache_key(
    rules: Sequence[Rule], *, violation: ViolationAction, never_action: NeverAction
) -> bytes:
    """The cache's name for a program: a digest of everything that determines it."""
    h = filtercache.sha256(b"outheis-sandbox filter 1\0" + _builder_identity())
    h.update(f"\0{violation}\0{never_action}\0".encode())
    for rule in rules:
        h.update(_canonical(rule))
    h.update(b"never\0" + "\0".join(NEVER).encode())
    for rule, _why in NEVER_ARGS:
        h.update(_canonical(rule))
    return h.digest()


def _template(
    rules: Sequence[Rule], violation: ViolationAction, never_action: NeverAction
) -> filtercache.Entry | None:
    """A cache entry for `rules`: the program with its pid slots, or None where a pid's value
    could change the program beyond its slots (then nothing is cached).

    Built with two placeholders, the instructions where the two builds differ must all be
    a JEQ on the placeholder: those are the slots. libseccomp's layout depends on compared
    values in two ways, both excluded: it orders the comparisons on one argument by value
    (so a SELF_PID comparison must be alone on its argument), and it shares identical
    blocks of code (so a pid equal to any other JEQ constant of the program, a syscall
    number for one, could share a block: such pids are `forbidden`, built directly). The
    tests check byte identity with libseccomp's own build across pids and promise sets.
    """

    def build(pid: int) -> bytes:
        return to_bpf(
            build_filter(rules, violation=violation, self_pid=pid, never_action=never_action)
        )

    a = build(_PID_A)
    named = _pid_alone(rules)
    if named is None:
        return None
    if not named:
        return filtercache.Entry(a, (), ())
    b = build(_PID_B)
    if len(a) != len(b):
        return None
    slots = []
    for i in range(0, len(a), _INSN.size):
        if a[i : i + _INSN.size] == b[i : i + _INSN.size]:
            continue
        code, jt, jf, k = _INSN.unpack_from(a, i)
        if _INSN.unpack_from(b, i) != (code, jt, jf, _PID_B) or code != _BPF_JEQ_K or k != _PID_A:
            return None
        slots.append(i // _INSN.size)
    constants = {
        k
        for i in range(0, len(a), _INSN.size)
        if i // _INSN.size not in slots
        for code, _jt, _jf, k in (_INSN.unpack_from(a, i),)
        if code == _BPF_JEQ_K
    }
    return filtercache.Entry(a, tuple(slots), tuple(sorted(constants)))


def _pid_alone(rules: Sequence[Rule]) -> bool | None:
    """Whether the rules name SELF_PID; None if a SELF_PID comparison is not an equality
    alone on its argument (no other comparison on that argument of that call)."""
    every = [*rules, *(r for r, _ in NEVER_ARGS)]
    places = {(r.syscall, a.index) for r in every for a in r.args if a.value == SELF_PID}
    for r in every:
        for a in r.args:
            if (r.syscall, a.index) in places and (a.value != SELF_PID or a.op != "eq"):
                return None
    return bool(places)


def with_pid(entry: filtercache.Entry, pid: int) -> bytes | None:
    """The cached program with `pid` in its slots; None if the template cannot take it."""
    if not 0 < pid < _PID_A or pid in entry.forbidden:
        return None
    out = bytearray(entry.program)
    for slot in entry.slots:
        code, _jt, _jf, k = _INSN.unpack_from(out, slot * _INSN.size)
        if code != _BPF_JEQ_K or k != _PID_A:
            return None
        struct.pack_into("=I", out, slot * _INSN.size + 4, pid)
    return bytes(out)


# seccomp(2) itself: libseccomp writes the program, we load it. pyseccomp's public API has
# no way to hand over the listener fd of a filter it loaded (libseccomp's
# seccomp_notify_fd), and a program we load ourselves can also come from a cache.
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 16  # TSYNC with a listener: fail with ESRCH, not a tid
_BPF_INSN = 8  # bytes of one struct sock_filter


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _exported(write: Callable[[Any], None]) -> bytes:
    """What libseccomp's export `write(file)` writes, read back through a pipe.

    A pipe, not a memfd: a narrowing pledge() builds its filter under the filter it
    narrows, which allows pipe2 (stdio) but not memfd_create. A BPF program has at most
    4,096 instructions (32 KiB), so it fits the pipe's 64 KiB; the write end is
    non-blocking all the same, so a larger export fails instead of hanging.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        os.set_blocking(w, False)
        with os.fdopen(w, "wb", closefd=False) as f:
            write(f)
        os.close(w)
        w = -1
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def to_bpf(filt: pyseccomp.SyscallFilter) -> bytes:
    """The BPF program libseccomp built for `filt` (struct sock_filter[])."""
    return _exported(filt.export_bpf)


def load_bpf(program: bytes, *, listener: bool, tsync: bool = False) -> int | None:
    """Load a BPF program into the calling thread (every thread with `tsync`) with seccomp(2).

    PR_SET_NO_NEW_PRIVS must already be set. With `listener`, return the user-notification
    fd (close-on-exec; the kernel allows one listener per filter chain).
    """
    if not hygiene.no_new_privs():
        raise SetupError("seccomp: PR_SET_NO_NEW_PRIVS is not set; refusing to install")
    if not program or len(program) % _BPF_INSN or len(program) // _BPF_INSN > 0xFFFF:
        raise SetupError(f"seccomp: not a BPF program ({len(program)} bytes)")
    flags = 0
    if listener:
        flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER
    if tsync:
        flags |= SECCOMP_FILTER_FLAG_TSYNC | (SECCOMP_FILTER_FLAG_TSYNC_ESRCH if listener else 0)
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // _BPF_INSN, ctypes.cast(buf, ctypes.c_void_p))
    nr = syscall_number("seccomp")
    if nr is None:
        raise SetupError("seccomp: this architecture has no seccomp(2)")
    try:
        res = libc.syscall(nr, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog))
    except OSError as e:
        raise SetupError(f"seccomp: cannot load the filter: {os.strerror(e.errno or 0)}") from None
    if tsync and not listener and res > 0:
        raise SetupError(f"seccomp: thread {res} could not be synchronised to the filter")
    return res if listener else None


def install(filt: pyseccomp.SyscallFilter, *, listener: bool, tsync: bool = False) -> int | None:
    """Load `filt` (see load_bpf); with `listener`, return the user-notification fd.

    The filter should contain a notify action (the violation action 'notify', a notify
    rule or never_action 'notify'), or the listener never hears anything.
    """
    return load_bpf(to_bpf(filt), listener=listener, tsync=tsync)


def export_pfc(
    rules: Sequence[Rule],
    *,
    violation: ViolationAction = "kill",
    self_pid: int | None = None,
    never_action: NeverAction = "kill",
) -> str:
    """libseccomp's pseudo-filter code for `rules`, for debugging."""
    filt = build_filter(
        rules,
        violation=violation,
        self_pid=os.getpid() if self_pid is None else self_pid,
        never_action=never_action,
    )
    # Text, possibly larger than a pipe holds, and never made under a filter: a memfd.
    fd = os.memfd_create("pfc", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "w") as f:
            filt.export_pfc(f)
        return os.pread(fd, os.fstat(fd).st_size, 0).decode()
    finally:
        os.close(fd)


# --- user notification on a raw listener fd ----------------------------------------------------

# struct seccomp_notif { u64 id; u32 pid; u32 flags;
#   struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; } }
_NOTIF = struct.Struct("=QIIiIQ6Q")
# struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }
_RESP = struct.Struct("=QqiI")
# struct seccomp_notif_addfd { u64 id; u32 flags; u32 srcfd; u32 newfd; u32 newfd_flags; }
_ADDFD = struct.Struct("=QIIII")


def _iowr(nr: int, size: int, write: bool, read: bool) -> int:
    direction = (1 if write else 0) | (2 if read else 0)  # _IOC_WRITE=1, _IOC_READ=2
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV = _iowr(0, _NOTIF.size, True, True)
SECCOMP_IOCTL_NOTIF_SEND = _iowr(1, _RESP.size, True, True)
SECCOMP_IOCTL_NOTIF_ID_VALID = _iowr(2, 8, True, False)
SECCOMP_IOCTL_NOTIF_ADDFD = _iowr(3, _ADDFD.size, True, False)
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2


@plain(frozen=True)
class Notification:
    id: int
    pid: int  # in the listener's pid namespace
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]
    instruction_pointer: int = 0

    @property
    def syscall(self) -> str:
        if self.arch != native_arch():
            return f"syscall_{self.nr}@arch_{self.arch:#x}"
        return syscall_name(self.nr)


def recv_notification(fd: int) -> Notification | None:
    """Receive one notification (blocks unless the fd polled readable).

    None if it vanished before we read it (the target was killed or its call interrupted).
    """
    buf = bytearray(_NOTIF.size)
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, ip, *args = _NOTIF.unpack(buf)
    a0, a1, a2, a3, a4, a5 = args
    return Notification(nid, pid, nr, arch, (a0, a1, a2, a3, a4, a5), ip)


def respond(fd: int, id: int, *, error: int = 0, val: int = 0, continue_: bool = False) -> bool:
    """Answer notification `id`: fail the call with `error` (an errno, e.g. EPERM), return
    `val`, or let it run (`continue_`, only where the decision cannot race: the target may
    change its memory between our check and the kernel's use of it).

    False if the target is gone (killed, or its call interrupted by a signal).
    """
    if continue_ and (error or val):
        raise ValueError("a CONTINUE response carries no error or value")
    err = -abs(error) if error else 0
    flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if continue_ else 0
    return _ioctl_pending(fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(_RESP.pack(id, val, err, flags)))


def _ioctl_pending(fd: int, request: int, buf: bytearray) -> bool:
    """A notification ioctl; False if the notification is gone (ENOENT: target died)."""
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def id_valid(fd: int, id: int) -> bool:
    """Whether notification `id` is still pending (its target still waits for our answer).

    Check it after reading the target's memory and before acting on what was read.
    """
    return _ioctl_pending(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, bytearray(struct.pack("=Q", id)))


def add_fd(fd: int, id: int, srcfd: int, *, send: bool = True, cloexec: bool = True) -> int | None:
    """Install our `srcfd` in the target as the result of its pending call (`send`), or just
    install it (then answer separately). Returns the fd number in the target, or None if
    the target is gone."""
    flags = SECCOMP_ADDFD_FLAG_SEND if send else 0
    buf = bytearray(_ADDFD.pack(id, flags, srcfd, 0, os.O_CLOEXEC if cloexec else 0))
    try:
        return int(fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, buf, True))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def preload() -> None:
    """Load libseccomp now (the launcher calls this before fork: the child builds its filter
    after Landlock has hidden the files a lazy import would read)."""
    _lib()
