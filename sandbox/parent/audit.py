"""The tamper-evident audit log (SPEC section 6): JSON Lines, hash-chained, write-ahead.

Format. One JSON object a line, keys in this order: seq, time, kind, agent, the kind's
fields, prev. `prev` is the hex SHA-256 of the previous line's bytes *without* its
trailing newline (64 zeros for the first record), so `sha256(line.rstrip(b"\\n"))`
is all a third-party verifier needs. Lines are split on b"\\n" only: records are written
with ensure_ascii=False, so a str.splitlines() reader would also split on U+2028.

What the chain proves: no record was changed, removed, inserted or reordered, except at
the end: the last record can be altered, or whole records cut off the end, without
breaking the chain. Anchor the head hash (VerifyResult.head) elsewhere when that matters.

Durability (write-ahead). The caller appends the records that describe what it is about
to do, commits, and only then lets the operation take effect. A commit that fails breaks
the log for good: every later append or commit raises AuditError, so the caller refuses
every later operation (fail closed).

Two durability modes (the policy's `audit: {sync: ..., window: ...}`, see the README):

- `durable` (the default): commit() returns only after an fdatasync that began after
  this commit's write() has returned. Nothing acknowledged is lost, even on power loss.
- `batch`: commit() of `op` records returns after the write(); a syncer thread runs
  fdatasync at most once per `window`, no later than `window` after the first write it
  has not covered. Every other kind (start, lock, violation, denied, suppressed, exit,
  error, and other logs' kinds) stays synchronous. A SIGKILL of the writer loses
  nothing (the bytes are in the kernel's page cache once write() returns); a kernel
  crash or power loss loses at most the `op` records of the last window (and one
  fdatasync's duration).

Several writers (one `sandbox run` per agent sharing one log). Each AuditLog holds an
exclusive flock(2) on the file from its first append to the write() of its commit;
under the lock it re-reads the last line if the file grew, so seq and prev continue
whatever another process wrote. The chain's order is fixed by the write under the lock,
so the lock is released *before* the fdatasync: writers sync concurrently, and the
kernel's journal commits their syncs together (ext4's jbd2 joins fdatasync calls that
arrive while a commit runs into the next one). fdatasync flushes the file (the inode),
whichever descriptor or process wrote the bytes, so a sync that began after a write
covers it. Within one process the log counts its writes and what each sync covered: a
commit whose write an fdatasync already in flight (begun after it) or finished covers
waits for that one instead of syncing again. The wait for the lock is a blocking flock:
the kernel wakes waiters when it is released, so a busy writer cannot starve the others
(a polling loop with sleeps did, in test_concurrent_processes_share_one_chain). So
commit promptly after append: a writer that holds a batch open holds up every other
writer of the file. One AuditLog per file per process; a second one is refused, as it
would wait on the first forever.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from sandbox.errors import SandboxError
from sandbox.plain import plain

if TYPE_CHECKING:
    from hashlib import sha256
else:
    try:  # CPython's own SHA-256: importing hashlib initialises OpenSSL (~2 ms a launch)
        from _sha256 import sha256
    except ImportError:  # other Pythons, or 3.12+ (_sha2)
        from hashlib import sha256

ZERO_HASH = "0" * 64

# A field is satisfied by any one of the names in its group ("path or url").
REQUIRED: Mapping[str, tuple[tuple[str, ...], ...]] = MappingProxyType(
    {
        "start": (("pid",), ("policy",), ("policy_sha256",), ("command",), ("enforced",)),
        "lock": (("pid",), ("pledge",), ("unveil",)),
        "violation": (("pid",), ("syscall",), ("args",), ("promise",), ("action",)),
        "op": (("pid",), ("op",), ("resource",), ("path", "url"), ("decision",), ("reason",)),
        "exit": (("pid",), ("status", "signal")),
        # A refusal by Landlock (sandbox.parent.denials): what and how to allow it.
        "denied": (("pid",), ("syscall",), ("access",), ("fix",), ("source",)),
        # Additions to SPEC's kinds (see the README's audit-log table):
        # refusals not written whole because an agent exceeded the rate limit, counted
        # (sandbox.parent.ratelimit): one record per window instead of one per refusal.
        "suppressed": (("pid",), ("count",), ("window",), ("counts",)),
        # a handler of the parent failed on what an agent sent; the agent got an error
        # reply (or its call an error) and the parent went on.
        "error": (("pid",), ("where",), ("error",)),
    }
)
COMMON_KEYS = ("seq", "time", "kind", "agent")
RESERVED_KEYS = frozenset({*COMMON_KEYS, "prev"})

# Size bounds. Strings come partly from the agent (paths, URLs, syscall arguments), so
# each is capped and the whole record too: a record is never larger than one write.
MAX_STRING = 4096  # characters; longer strings are cut and marked
MAX_RECORD = 64 * 1024  # bytes of one serialised line
MAX_DEPTH = 16  # nesting of lists/objects in a field value
# A reader accepts no more: a line longer than any record, or nested deeper than any
# record can be, was not written by this log, and reading it must neither exhaust memory
# nor recurse without bound (json.loads recurses once per level).
MAX_LINE = MAX_RECORD + 1  # bytes, newline included
MAX_READ_DEPTH = MAX_DEPTH + 2  # the record object and one field level around the values
# One commit is written in os.write() calls of at most this many bytes, each holding
# whole records only, so a line is never split between two write() calls. On Linux a
# write() to a regular O_APPEND file is done under the inode lock and cannot interleave
# with another process's write(); keeping each call small also keeps a short write (a
# fatal signal or a full disk between pages) unlikely, and such a short write leaves at
# most one partial final line, which verify reports and the constructor refuses to
# continue. Cooperating writers also hold the flock, so they never interleave at all.
MAX_WRITE = 64 * 1024

# Durability modes (see the module's docstring). The window is bounded: a batch window
# is a promise about how much a power loss can take, so it stays short.
SYNC_MODES = ("durable", "batch")
DEFAULT_WINDOW = 0.002  # seconds
MAX_WINDOW = 1.0
# The kinds that batch mode acknowledges before their sync: the per-request records of the
# broker and of the calls the parent performs. Every other kind is evidence that must
# survive a crash the moment it is acknowledged (refusals, locks, exits, starts, errors).
BATCHABLE = frozenset({"op"})

# (st_dev, st_ino) of the logs open in this process: see "One AuditLog per file".
_OPEN_LOGS: set[tuple[int, int]] = set()
_OPEN_LOGS_MUTEX = threading.Lock()


class AuditError(SandboxError):
    """The audit log cannot be opened or written; the caller must refuse the operation."""


@plain(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records that passed every check
    first_bad_line: int | None
    message: str
    head: str = ZERO_HASH  # SHA-256 of the last good line: anchor it to detect cut-off tails


_SECOND: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _now() -> str:
    # time, not datetime: its import costs ~2 ms of every launch. The seconds' text is
    # formatted once a second (strftime is most of the cost of a timestamp).
    global _SECOND
    secs, ns = divmod(time.time_ns(), 1_000_000_000)
    cached = _SECOND
    if cached[0] != secs:
        cached = _SECOND = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
    return f"{cached[1]}.{ns // 1000:06d}Z"


def _line_hash(line: bytes) -> str:
    return sha256(line).hexdigest()


# ---------------------------------------------------------------------------- values


def _clean_str(s: str) -> str:
    """Valid UTF-8, bounded: lone surrogates (os.fsdecode of non-UTF-8 names) as escapes."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = "".join(
            (f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}")
            if 0xD800 <= ord(c) <= 0xDFFF
            else c
            for c in s
        )
    if len(s) > MAX_STRING:
        s = f"{s[:MAX_STRING]}...[{len(s) - MAX_STRING} more characters]"
    return s


def _jsonable(value: Any, where: str, depth: int = 0) -> Any:
    """A deterministic JSON-safe copy of `value`, or ValueError naming the field."""
    if depth > MAX_DEPTH:
        raise ValueError(f"audit field {where}: nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit field {where}: {value} is not a JSON number")
        return value
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # Kernel-side paths are bytes; keep them readable, escape what is not UTF-8.
        return _clean_str(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, os.PathLike):
        return _jsonable(os.fspath(value), where, depth)
    if isinstance(value, Enum):
        return _jsonable(value.value, where, depth)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _jsonable(k, where, depth + 1)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ValueError(f"audit field {where}: key {k!r} is not a string")
            out[str(key)] = _jsonable(v, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [_jsonable(v, f"{where}[]", depth + 1) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    raise ValueError(f"audit field {where}: a {type(value).__name__} is not JSON data")


Kinds = Mapping[str, tuple[tuple[str, ...], ...]]


def _check_required(
    kind: str, present: Callable[[str], bool], kinds: Kinds = REQUIRED
) -> str | None:
    """The first missing field of `kind` (described), or None."""
    for group in kinds.get(kind, ()):
        if not any(present(name) for name in group):
            return " or ".join(repr(n) for n in group)
    return None


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# (kinds table id, kind, field names as given) -> the names in record order, or the
# ValueError message: checked once per shape, not per record. Shapes come from our code
# (field names), never from agents; the bound only keeps a bug from growing it.
_SHAPES: dict[tuple[int, str, tuple[str, ...]], tuple[tuple[str, ...], bool] | str] = {}
_MAX_SHAPES = 4096


def _shape(kind: str, names: tuple[str, ...], kinds: Kinds) -> tuple[tuple[str, ...], bool] | str:
    """The field names in record order (the kind's fields in table order, then extras in
    the caller's order) and whether `names` is in that order already, or why a record of
    this kind cannot have these fields."""
    key = (id(kinds), kind, names)
    known = _SHAPES.get(key)
    if known is not None:
        return known
    out: tuple[tuple[str, ...], bool] | str
    if kind not in kinds:
        out = f"unknown audit record kind {kind!r} (known: {', '.join(kinds)})"
    elif clash := RESERVED_KEYS.intersection(names):
        out = f"audit record {kind}: fields {sorted(clash)} are set by the log"
    elif (missing := _check_required(kind, names.__contains__, kinds)) is not None:
        out = f"audit record {kind}: missing field {missing}"
    else:
        ordered = [n for group in kinds[kind] for n in group if n in names]
        order = (*ordered, *(n for n in names if n not in ordered))
        out = (order, order == names)
    if len(_SHAPES) < _MAX_SHAPES:
        _SHAPES[key] = out
    return out


def _plain(fields: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    """Whether the encoder writes these values as _jsonable would (no copy needed): strings
    within MAX_STRING, ints, bools, None; the usual record."""
    for name in names:
        value = fields[name]
        kind = type(value)
        if kind is str:
            if len(value) > MAX_STRING:
                return False
        elif kind is not int and kind is not bool and value is not None:
            return False
    return True


# (kind, agent) -> the record's text between time and its fields: encoded once.
_HEADS: dict[tuple[str, str], str] = {}


def prepare_record(
    kind: str, agent: str, fields: Mapping[str, Any], kinds: Kinds = REQUIRED
) -> bytes | None:
    """The bytes of a record from its kind to its last field (everything but seq, time and
    prev), for a record of plain values (strings within bounds, numbers): encoded in one
    call of the C encoder, byte for byte what json.dumps of the whole record gives. None
    when the values need the copying path (build_line). ValueError for a record that
    cannot be built. No lock is needed: AuditLog.append encodes before taking the file's."""
    shape = _shape(kind, tuple(fields), kinds)
    if isinstance(shape, str):
        raise ValueError(shape)
    names, in_order = shape
    if not _plain(fields, names):
        return None
    head = _HEADS.get((kind, agent))
    if head is None:
        head = f'"kind":{_ENCODE(kind)},"agent":{_ENCODE(agent)}'
        if len(_HEADS) < _MAX_SHAPES:
            _HEADS[(kind, agent)] = head
    if names:
        body = _ENCODE(fields if in_order else {n: fields[n] for n in names})
        head = f"{head},{body[1:-1]}"
    try:
        data = head.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the copying path escapes it
        return None
    # seq, time and prev add at most 130 bytes: a record near the bound is measured whole.
    return data if len(data) + 130 <= MAX_RECORD else None


def _finish(seq: int, prev: str, middle: bytes) -> bytes:
    """A prepared record with its seq, time and prev (under the lock: they are the chain's)."""
    return b'{"seq":%d,"time":"%s",%s,"prev":"%s"}' % (
        seq,
        _now().encode("ascii"),
        middle,
        prev.encode("ascii"),
    )


def build_line(
    seq: int,
    kind: str,
    agent: str,
    fields: Mapping[str, Any],
    prev: str,
    kinds: Kinds = REQUIRED,
    checked: bool = False,
) -> bytes:
    """One serialised record, without its newline (the bytes that are hashed). `kinds`:
    the record kinds of this log and their fields (the message log has its own);
    `checked`: the caller's values are JSON data within the bounds already (the message
    log's messages, parsed and bounded by sandbox.system.message), not copied again."""
    middle = prepare_record(kind, agent, fields, kinds)
    if middle is not None:
        return _finish(seq, prev, middle)
    shape = _shape(kind, tuple(fields), kinds)  # cached: prepare_record looked it up
    if isinstance(shape, str):
        raise ValueError(shape)
    names = shape[0]
    record: dict[str, Any] = {"seq": seq, "time": _now(), "kind": kind, "agent": agent}
    for name in names:
        record[name] = fields[name] if checked else _jsonable(fields[name], name)
    record["prev"] = prev
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = line.encode("utf-8")
    if len(data) > MAX_RECORD:
        raise ValueError(f"audit record {kind}: {len(data)} bytes, more than {MAX_RECORD}")
    return data


# ---------------------------------------------------------------------------- tail


def _last_line_start(fd: int, end: int) -> int | None:
    """Offset just after the last b"\\n" before `end` (0 if none), reading backwards at most
    MAX_LINE bytes: None if the last line is longer than any record can be."""
    limit = max(0, end - MAX_LINE - 1)
    start = max(limit, 0)
    buf = os.pread(fd, end - start, start)
    cut = buf.rfind(b"\n")
    if cut >= 0:
        return start + cut + 1
    return 0 if start == 0 else None


def _line_number(fd: int, offset: int) -> int:
    """The number (from 1) of the line that starts at `offset` (error messages only)."""
    lines, pos = 1, 0
    while pos < offset:
        chunk = os.pread(fd, min(1 << 20, offset - pos), pos)
        if not chunk:
            break
        lines += chunk.count(b"\n")
        pos += len(chunk)
    return lines


_TAIL_READ = 4096  # bytes read to find the last line in the usual case (a record < 1 KiB)


def _read_tail(fd: int, size: int, path: str) -> tuple[int, str]:
    """(seq, hash) of the last record of a log of `size` bytes read through `fd`.

    Read under the file lock whenever another writer appended since our last write (with
    several writers, at nearly every commit): one pread of the last 4 KiB in the usual
    case, the careful path for a long or a partial last line."""
    if size == 0:
        return 0, ZERO_HASH
    span = min(size, _TAIL_READ)
    buf = os.pread(fd, span, size - span)
    if buf.endswith(b"\n"):
        nl = buf.rfind(b"\n", 0, span - 1)
        if nl >= 0 or span == size:
            return _tail_record(fd, path, size - span + nl + 1, buf[nl + 1 : -1])
    if os.pread(fd, 1, size - 1) != b"\n":
        # A write cut short: SIGKILL between two pages of a write() (observed with group
        # commits), a power loss. (A full disk leaves no partial line: a failed commit
        # cuts what it wrote off again, see AuditLog._commit_locked.) The cut record's
        # commit never returned, so the operation it describes never took effect
        # (write-ahead): dropping it loses nothing that happened. That is the operator's
        # call, not ours.
        good = _last_line_start(fd, size)
        where = f"{path}:{_line_number(fd, good)}" if good is not None else path
        cut = (
            f"cut the partial line off with 'truncate -s {good} {path}'"
            if good is not None
            else "find where its last record ends (the line is longer than any record)"
        )
        raise AuditError(
            f"{where}: the last line is incomplete (a write cut short by a crash); refusing "
            f"to append after it. Check it with 'sandbox audit verify {path}'; to continue "
            f"the log, {cut}."
        )
    start = _last_line_start(fd, size - 1)
    if start is None:
        raise AuditError(
            f"{path}:{_line_number(fd, size - 1)}: the last line is longer than any audit "
            f"record ({MAX_RECORD} bytes); refusing to continue the chain. Run 'sandbox audit "
            f"verify {path}'."
        )
    return _tail_record(fd, path, start, os.pread(fd, size - 1 - start, start))


def _tail_record(fd: int, path: str, start: int, line: bytes) -> tuple[int, str]:
    """(seq, hash) of the last line, which starts at `start`, or AuditError if it is not
    a record this log can continue."""
    record = _parse(line)
    seq = record.get("seq") if isinstance(record, dict) else None
    if not isinstance(record, dict) or "seq" not in record:
        why = record if isinstance(record, str) else "it has no seq"
        raise AuditError(
            f"{path}:{_line_number(fd, start)}: the last record is not a valid audit record "
            f"({why}); refusing to continue the chain. Run 'sandbox audit verify {path}'."
        )
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise AuditError(
            f"{path}:{_line_number(fd, start)}: the last record has a bad seq {seq!r}; run verify"
        )
    return seq, _line_hash(line)


# ---------------------------------------------------------------------------- writer


_OPEN_ERRORS: Mapping[int, str] = MappingProxyType(
    {
        errno.ELOOP: "is a symbolic link; the audit log must be a regular file",
        errno.ENXIO: "is not a regular file (a FIFO or socket)",
        errno.EISDIR: "is a directory; the audit log must be a regular file",
        errno.EACCES: "is not writable (permission denied)",
        errno.EPERM: "is not writable (operation not permitted)",
        errno.EROFS: "is not writable (read-only file system)",
        errno.ENOENT: "cannot be created (its directory does not exist)",
    }
)


class AuditLog:
    """An append-only, hash-chained audit log, written ahead of the operations it records.

    Group commit: the parent's event loop reads a batch of broker requests and
    notifications, append()s one record for each, then commit()s once: one write() and
    one fdatasync() per batch instead of per record. fdatasync is the cost that matters
    (see ci/bench_audit.py, which prints this disk's latency beside its rows), so this
    keeps the log durable before any operation takes effect without paying one sync per
    request.

    Thread-safe: one mutex covers the log's state, so worker threads, the event loop and
    the batch syncer share one AuditLog. It is not held across an fdatasync: other
    threads append and write meanwhile. commit() makes durable (in batch mode: written,
    and durable where a record's kind is not batchable) every record appended before it,
    by any thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        agent: str,
        kinds: Kinds = REQUIRED,
        checked: bool = False,
        *,
        sync: str = "durable",
        window: float = DEFAULT_WINDOW,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"audit sync mode {sync!r} unknown (one of {', '.join(SYNC_MODES)})")
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"audit window {window}s out of range (0 < window <= {MAX_WINDOW}s)")
        self.path = os.fspath(path)
        self.agent = agent
        self.kinds = kinds
        self.checked = checked  # see build_line
        self.sync = sync
        self.window = window
        self._batch = sync == "batch"
        self._mutex = threading.Lock()
        # Waited on by commits whose records a sync in flight covers, and by the syncer.
        self._cond = threading.Condition(self._mutex)
        self._buffer: list[bytes] = []  # whole lines, with their newline
        self._buffer_sync = False  # a buffered record's kind is not batchable
        self._seq = 0  # last seq appended (committed or buffered)
        self._prev = ZERO_HASH  # hash of the last line appended
        self._end = -1  # file size after our last write; -1: re-read the tail
        # Writes (commits that wrote something) counted: a sync that starts after write n
        # has returned covers writes 1..n, whoever's descriptor wrote them.
        self._written = 0
        self._synced = 0  # the last write covered by a finished fdatasync
        self._syncing = 0  # the last write covered by an fdatasync in flight
        self._inflight = 0  # fdatasync calls running (close() waits for them)
        self._needed = 0  # batch: the last write holding a record that must be durable
        self._dirty_since: float | None = None  # batch: when a write no sync covers began
        self._syncer: threading.Thread | None = None
        self._syncer_idle = False  # waiting with no deadline: a new write must wake it
        self._flocked = False
        self._broken: str | None = None
        self._closed = False
        self._fd, self._rfd = self._open()
        st = os.fstat(self._fd)
        self._key = (st.st_dev, st.st_ino)
        with _OPEN_LOGS_MUTEX:
            if self._key in _OPEN_LOGS:
                os.close(self._fd)
                os.close(self._rfd)
                raise AuditError(
                    f"audit log {self.path} is already open in this process; share that "
                    f"AuditLog (it is thread-safe) instead of opening a second one"
                )
            _OPEN_LOGS.add(self._key)
        try:
            self._lock_file()
            try:
                self._sync_tail()
            except OSError as e:
                raise AuditError(f"audit log {self.path} cannot be read: {e.strerror}") from None
            finally:
                self._unlock_file()
        except BaseException:
            self._release()
            raise

    @property
    def durability(self) -> dict[str, Any]:
        """The mode in force, as the start record states it."""
        if self._batch:
            return {"sync": "batch", "window": self.window}
        return {"sync": "durable"}

    def _release(self) -> None:
        self._closed = True
        self._unlock_file_quietly()
        for fd in (self._fd, self._rfd):
            with contextlib.suppress(OSError):  # EBADF only if someone closed it under us
                os.close(fd)
        with _OPEN_LOGS_MUTEX:
            _OPEN_LOGS.discard(self._key)

    def _open(self) -> tuple[int, int]:
        # O_NONBLOCK only so that a FIFO without a reader fails (ENXIO) instead of hanging.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o600)
        except OSError as e:
            why = _OPEN_ERRORS.get(e.errno or 0, e.strerror or str(e))
            raise AuditError(f"audit log {self.path} {why}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuditError(f"audit log {self.path} is not a regular file")
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            # A second, read-only descriptor to read the tail; the write one stays O_WRONLY.
            try:
                rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as e:
                raise AuditError(
                    f"audit log {self.path} cannot be read to continue its chain: {e.strerror}"
                ) from None
            rst = os.fstat(rfd)
            if (rst.st_dev, rst.st_ino) != (st.st_dev, st.st_ino):
                os.close(rfd)
                raise AuditError(f"audit log {self.path} was replaced while being opened")
        except BaseException:
            os.close(fd)
            raise
        return fd, rfd

    # -- the inter-process lock

    def _lock_file(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # Python retries on EINTR (PEP 475)
        except OSError as e:
            raise self._break(f"cannot lock: {e.strerror}") from None
        self._flocked = True

    def _unlock_file(self) -> None:
        if self._flocked:
            self._flocked = False
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError as e:
                raise self._break(f"cannot unlock: {e.strerror}") from None

    def _sync_tail(self) -> None:
        """Under the flock: continue from what is in the file if someone else wrote. The
        one fstat of a commit: the size is also where this commit's write begins."""
        size = os.fstat(self._fd).st_size
        if size != self._end:
            self._seq, self._prev = _read_tail(self._rfd, size, self.path)
            self._end = size

    def _break(self, why: str) -> AuditError:
        self._broken = why
        return AuditError(
            f"audit log {self.path}: {why}; the log refuses further records "
            f"(every operation that needs a record is refused)"
        )

    def _usable(self) -> None:
        if self._closed:
            raise AuditError(f"audit log {self.path} is closed")
        if self._broken is not None:
            raise AuditError(f"audit log {self.path} is broken ({self._broken}); refusing")

    # -- the public interface

    @property
    def broken(self) -> str | None:
        """Why the log refuses records, or None while it works."""
        return self._broken

    def append(self, kind: str, **fields: Any) -> int:
        """Build and buffer one record; return its seq. Not durable until commit(). A field
        `agent` names the record's agent (default: this log's)."""
        agent = fields.pop("agent", None) or self.agent
        if self._closed or self._broken is not None:
            self._usable()
        # Encoded before the locks: under them only what the chain decides (seq, prev) and
        # the time are added, so other writers wait less.
        middle = prepare_record(kind, agent, fields, self.kinds)
        with self._mutex:
            if self._closed or self._broken is not None:
                self._usable()
            if not self._flocked:
                self._lock_file()
                try:
                    self._sync_tail()
                except AuditError as e:
                    self._unlock_file()
                    raise self._break(str(e)) from None
                except OSError as e:
                    self._unlock_file()
                    raise self._break(f"cannot read the tail: {e.strerror}") from None
            try:
                if middle is not None:
                    line = _finish(self._seq + 1, self._prev, middle)
                else:
                    line = build_line(
                        self._seq + 1, kind, agent, fields, self._prev, self.kinds, self.checked
                    )
            except ValueError:
                if not self._buffer:
                    self._unlock_file()
                raise
            self._buffer.append(line + b"\n")
            if kind not in BATCHABLE:
                self._buffer_sync = True
            self._seq += 1
            self._prev = sha256(line).hexdigest()  # _line_hash, inlined: once per record
            return self._seq

    def commit(self) -> None:
        """Write every buffered record, then make it durable (see the modes above);
        AuditError (log broken) on failure."""
        with self._mutex:
            self._usable()
            if self._buffer:
                self._write_locked()
            if not self._batch:
                self._await_sync(self._written)
            elif self._needed > self._synced:
                self._await_sync(self._needed)
            elif self._written > self._synced:
                self._schedule_sync()

    def _write_locked(self) -> None:
        """Under the mutex and the flock: write the buffer, then release the flock (the
        chain's order is fixed now; the sync comes after, unlocked)."""
        lines, self._buffer = self._buffer, []
        must_sync, self._buffer_sync = self._buffer_sync, False
        # _sync_tail ran when the flock was taken: under it no cooperating writer
        # appends, so the file ends here until our write: where to cut back to on failure.
        start = self._end
        try:
            for chunk in _chunks(lines, MAX_WRITE):
                view = memoryview(chunk)
                while view:
                    n = os.write(self._fd, view)
                    if n <= 0:
                        raise OSError(errno.EIO, "write() wrote nothing")
                    view = view[n:]
                    self._end = -1  # the file changed; our size bookkeeping is void
        except OSError as e:
            # A full disk (or a quota, a file-size limit) stops a write() part of the way
            # through a line. Cut back what this commit wrote, so that no partial line is
            # left for the next writer: the records never became durable and the
            # operations they describe never take effect (write-ahead). Shrinking needs no
            # space. If even that fails, the partial line stays and the next writer
            # refuses it with instructions (as after a crash).
            self._cut_back(start)
            self._unlock_file_quietly()
            raise self._break(f"commit failed: {e.strerror or e}") from None
        self._end = start + sum(map(len, lines))
        self._written += 1
        if must_sync:
            self._needed = self._written
        if self._batch and self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._unlock_file()

    def _await_sync(self, target: int) -> None:
        """Under the mutex: return once a finished fdatasync covers write `target`."""
        while self._synced < target:
            if self._broken is not None:
                raise AuditError(f"audit log {self.path} is broken ({self._broken}); refusing")
            if self._syncing >= target:
                self._cond.wait()  # a sync that began after our write is running
            else:
                self._sync_locked()

    def _sync_locked(self) -> None:
        """Under the mutex: one fdatasync covering every write so far, run unlocked."""
        cover = self._written
        self._syncing = max(self._syncing, cover)
        self._dirty_since = None
        self._inflight += 1
        self._mutex.release()
        error: OSError | None = None
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            error = e
        finally:
            self._mutex.acquire()
            self._inflight -= 1
        if error is not None:
            # The records were written and may be read back, but they are not known to
            # be durable: the operations they describe are refused (write-ahead), and so
            # is everything after. (Other writers may have appended since; nothing is
            # cut back.)
            broken = self._break(f"commit failed: {error.strerror or error}")
            self._cond.notify_all()  # commits waiting on this sync must not wait for good
            raise broken
        self._synced = max(self._synced, cover)
        self._cond.notify_all()

    # -- batch mode: the syncer

    def _schedule_sync(self) -> None:
        """Under the mutex (batch mode, a write no sync covers): the syncer syncs it
        within the window."""
        if self._syncer is None:
            self._syncer = threading.Thread(
                target=self._run_syncer, name=f"audit-sync {self.path}", daemon=True
            )
            self._syncer.start()
        elif self._syncer_idle:
            # Only an idle syncer is woken: one waiting for the deadline of an earlier
            # write covers this one too, and waking it for every commit (the GIL handed
            # to another thread and back) cost more than the commit itself.
            self._cond.notify_all()

    def _run_syncer(self) -> None:
        with self._mutex:
            while not self._closed and self._broken is None:
                since = self._dirty_since
                if since is None:
                    self._syncer_idle = True
                    self._cond.wait()
                    self._syncer_idle = False
                    continue
                delay = since + self.window - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                try:
                    self._sync_locked()
                except AuditError:
                    return  # the log is broken; the next commit says so

    def record(self, kind: str, **fields: Any) -> int:
        """append() and commit(): the record is durable (written, in batch mode, for a
        batchable kind) when this returns."""
        seq = self.append(kind, **fields)
        self.commit()
        return seq

    def view(self, agent: str) -> AuditLog:
        """This log under another agent's name: the launches of one dispatcher share one
        AuditLog (one per file per process), each recording as itself."""
        return _AgentView(self, agent)

    def close(self) -> None:
        """Commit what is buffered and sync everything written (if the log works), then
        close. Waits for syncs in flight; stops the syncer."""
        syncer = None
        with self._mutex:
            if self._closed:
                return
            try:
                if self._broken is None:
                    if self._buffer:
                        self._write_locked()
                    self._await_sync(self._written)
            finally:
                self._closed = True
                self._cond.notify_all()
                while self._inflight:
                    self._cond.wait()
                syncer, self._syncer = self._syncer, None
                self._release()
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join()

    def _cut_back(self, start: int) -> None:
        if start < 0:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_size > start:
                os.ftruncate(self._fd, start)
                os.fdatasync(self._fd)

    def _unlock_file_quietly(self) -> None:
        if self._flocked:
            self._flocked = False
            # The log is broken already; closing the fd drops the lock anyway.
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def record_error(audit: AuditLog, pid: int, where: str, error: BaseException) -> None:
    """Record that a handler of the parent failed (kind `error`), if the log still works.

    Called where the failure has been answered already (an error reply, EPERM): the record
    is evidence, not a precondition, so a log that cannot take it changes nothing.
    """
    text = f"{type(error).__name__}: {error}"
    with contextlib.suppress(AuditError, ValueError):
        audit.record("error", pid=pid, where=where, error=text)


class _AgentView(AuditLog):
    """AuditLog.view(): records as `agent` into the log it wraps; closing it closes nothing."""

    def __init__(self, log: AuditLog, agent: str) -> None:  # opens nothing: shares `log`
        self._log, self.agent, self.path, self.kinds = log, agent, log.path, log.kinds
        self.checked, self.sync, self.window = log.checked, log.sync, log.window

    @property
    def durability(self) -> dict[str, Any]:
        return self._log.durability

    @property
    def broken(self) -> str | None:
        return self._log.broken

    def append(self, kind: str, **fields: Any) -> int:
        return self._log.append(kind, **{"agent": self.agent, **fields})

    def commit(self) -> None:
        self._log.commit()

    def close(self) -> None:
        pass  # the wrapped log's owner closes it


def _chunks(lines: list[bytes], bound: int) -> Iterator[bytes]:
    """Concatenations of whole lines, each at most `bound` bytes (or one line if larger)."""
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > bound:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        yield b"".join(batch)


# ---------------------------------------------------------------------------- reading


class _LongLine(ValueError):
    """A line longer than MAX_LINE: not read further (memory is bounded)."""

    def __init__(self, n: int) -> None:
        super().__init__(f"line {n}")
        self.n = n


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes without newline, had a newline), splitting on b"\\n" only.

    _LongLine at a line longer than any record (it is not read into memory whole).
    """
    with open(path, "rb") as f:
        n = 0
        while raw := f.readline(MAX_LINE + 1):
            n += 1
            if len(raw) > MAX_LINE:
                raise _LongLine(n)
            if raw.endswith(b"\n"):
                yield n, raw[:-1], True
            else:
                yield n, raw, False


def _nesting(line: bytes) -> int:
    """How deep brackets nest in `line`, counted outside strings (before any parsing)."""
    if line.count(b"[") + line.count(b"{") <= MAX_READ_DEPTH:
        return 0  # cannot nest deeper than the limit; most records stop here, fast
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _parse(line: bytes) -> dict[str, Any] | str:
    """The record on `line`, or why it is not one ("not valid JSON", ...).

    Bounded whatever the line holds: nesting is measured before json.loads (which recurses
    once per level and would raise RecursionError, or exhaust the stack), so a hostile
    line is reported, never a traceback.
    """
    if _nesting(line) > MAX_READ_DEPTH:
        return f"nested deeper than {MAX_READ_DEPTH} levels (no record is)"
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "not valid JSON"
    if not isinstance(value, dict):
        return "not valid JSON"
    return value


def _check_record(record: dict[str, Any], n: int, prev: str, kinds: Kinds = REQUIRED) -> str | None:
    """What is wrong with record `n` whose predecessor hashes to `prev`, or None."""
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"seq is {json.dumps(seq)}, expected {n}"
    if seq != n:
        return f"seq is {seq}, expected {n}"
    if record.get("prev") != prev:
        if n == 1:
            return "prev is not 64 zeros (the first record)"
        return f"prev does not match the hash of line {n - 1}"
    for key in ("kind", "agent", "time"):
        if not isinstance(record.get(key), str):
            return f"field {key!r} is missing or not a string"
    stamp = record["time"]
    try:
        from datetime import datetime  # verification only

        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return f"time {stamp!r} is not RFC 3339"
    if parsed.utcoffset() is None:
        return f"time {stamp!r} has no time zone"
    missing = _check_required(record["kind"], record.__contains__, kinds)
    if missing is not None:
        return f"{record['kind']} record without field {missing}"
    return None


def verify(path: str | os.PathLike[str], kinds: Kinds = REQUIRED) -> VerifyResult:
    """Recompute the chain; report the first bad line precisely."""
    prev, count = ZERO_HASH, 0

    def bad(n: int, why: str) -> VerifyResult:
        return VerifyResult(False, count, n, f"line {n}: {why}", prev)

    try:
        for n, line, complete in _lines(path):
            if not complete:
                return bad(n, "truncated (no newline at end of file)")
            record = _parse(line)
            if isinstance(record, str):
                return bad(n, record if line.strip() else "empty line")
            why = _check_record(record, n, prev, kinds)
            if why is not None:
                return bad(n, why)
            prev, count = _line_hash(line), count + 1
    except _LongLine as e:
        return bad(e.n, f"longer than {MAX_LINE} bytes (no record is)")
    except OSError as e:
        return VerifyResult(False, count, None, f"cannot read: {e.strerror or e}", prev)
    return VerifyResult(True, count, None, f"{count} records, chain intact", prev)


def _records(path: str | os.PathLike[str]) -> Iterator[tuple[bytes, dict[str, Any]]]:
    try:
        for n, line, complete in _lines(path):
            record = _parse(line) if complete else "truncated (no newline at end of file)"
            if isinstance(record, str):
                raise AuditError(f"{os.fspath(path)}:{n}: {record}")
            yield line, record
    except _LongLine as e:
        raise AuditError(
            f"{os.fspath(path)}:{e.n}: longer than {MAX_LINE} bytes (no record is)"
        ) from None


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records in order (parsed only, the chain is not checked: use verify)."""
    for _, record in _records(path):
        yield record


# ---------------------------------------------------------------------------- show


def _safe(text: str) -> str:
    """One terminal-safe line: agent-chosen strings cannot move the cursor or reorder text."""
    import unicodedata  # `audit show` only

    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
        else c
        for c in text
    )


def _compact(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " ".join(f"{k}:{_compact(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(_compact(v) for v in value)
    return json.dumps(value, ensure_ascii=False)


def _sum_start(r: Mapping[str, Any]) -> str:
    command = r.get("command")
    import shlex  # `audit show` only

    cmd = shlex.join(map(str, command)) if isinstance(command, list) else _compact(command)
    sha = str(r.get("policy_sha256") or "-")[:12]
    return f"{cmd}  policy={_compact(r.get('policy'))} ({sha})  enforced: " + _compact(
        r.get("enforced")
    )


def _sum_lock(r: Mapping[str, Any]) -> str:
    return f"pledge '{_compact(r.get('pledge'))}'  unveil {_compact(r.get('unveil'))}"


def _sum_violation(r: Mapping[str, Any]) -> str:
    args = r.get("args")
    shown = ", ".join(map(_compact, args)) if isinstance(args, list) else _compact(args)
    promise = r.get("promise")
    need = f"needs '{promise}'" if promise is not None else "is never allowed"
    return f"{_compact(r.get('syscall'))}({shown}) {need} -> {_compact(r.get('action'))}"


def _sum_op(r: Mapping[str, Any]) -> str:
    target = r.get("path") if r.get("path") is not None else r.get("url")
    text = f"{_compact(r.get('op'))} {_compact(r.get('resource'))}:{_compact(target)}"
    text += f" {_compact(r.get('decision'))}"
    reason = r.get("reason")
    return f"{text} ({_compact(reason)})" if reason else text


def _sum_denied(r: Mapping[str, Any]) -> str:
    access = r.get("access")
    shown = ",".join(map(_compact, access)) if isinstance(access, list) else _compact(access)
    target = next((r[k] for k in ("path", "port", "target") if r.get(k) is not None), None)
    return f"{_compact(r.get('syscall'))} {_compact(target)} ({shown}): {_compact(r.get('fix'))}"


def _sum_exit(r: Mapping[str, Any]) -> str:
    sig = r.get("signal")
    if sig is None:
        return f"status {_compact(r.get('status'))}"
    try:
        name = signal.Signals(sig).name if isinstance(sig, int) else str(sig)
    except ValueError:
        name = "?"
    return f"signal {sig} ({name})"


def _sum_suppressed(r: Mapping[str, Any]) -> str:
    counts = r.get("counts")
    shown = (
        ", ".join(f"{_compact(k)} x{_compact(v)}" for k, v in counts.items())
        if isinstance(counts, Mapping)
        else _compact(counts)
    )
    count, window = _compact(r.get("count")), _compact(r.get("window"))
    return f"{count} refusals not recorded whole in {window}s: {shown}"


def _sum_error(r: Mapping[str, Any]) -> str:
    return f"internal error in {_compact(r.get('where'))}: {_compact(r.get('error'))}"


def _sum_other(r: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in r.items() if k not in (*RESERVED_KEYS, "pid")}
    return json.dumps(rest, ensure_ascii=False, separators=(",", ":"))


SUMMARIES: Mapping[str, Callable[[Mapping[str, Any]], str]] = MappingProxyType(
    {
        "start": _sum_start,
        "lock": _sum_lock,
        "violation": _sum_violation,
        "op": _sum_op,
        "denied": _sum_denied,
        "exit": _sum_exit,
        "suppressed": _sum_suppressed,
        "error": _sum_error,
    }
)
SHOW_COLUMNS = ("SEQ", "TIME", "AGENT", "KIND", "PID", "SUMMARY")


def show_row(
    r: Mapping[str, Any],
    summaries: Mapping[str, Callable[[Mapping[str, Any]], str]] = SUMMARIES,
) -> tuple[str, ...]:
    """The cells of one record in `audit show`'s table (SHOW_COLUMNS), terminal-safe."""
    summary = summaries.get(str(r.get("kind")), _sum_other)(r)
    cells = (r.get("seq"), r.get("time"), r.get("agent"), r.get("kind"), r.get("pid"))
    return (*(_safe("-" if c is None else str(c)) for c in cells), _safe(summary))


def format_show(
    path: str | os.PathLike[str],
    agent: str | None = None,
    kind: str | None = None,
    as_json: bool = False,
    summaries: Mapping[str, Callable[[Mapping[str, Any]], str]] = SUMMARIES,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
) -> str:
    """The records of `path` matching agent, kind and `keep`: an aligned table, or JSON Lines.

    Raises AuditError at the first line that is not a record (after nothing is shown).
    """
    out: list[str] = []
    rows: list[tuple[str, ...]] = []
    for line, r in _records(path):
        if (agent is not None and r.get("agent") != agent) or (
            kind is not None and r.get("kind") != kind
        ):
            continue
        if keep is not None and not keep(r):
            continue
        if as_json:
            out.append(line.decode("utf-8"))
            continue
        rows.append(show_row(r, summaries))
    if as_json:
        return "".join(f"{line}\n" for line in out)
    table = [SHOW_COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(SHOW_COLUMNS) - 1)]

    def render(row: tuple[str, ...]) -> str:
        middle = [c.ljust(w) for c, w in zip(row[1:-1], widths[1:], strict=True)]
        return "  ".join([row[0].rjust(widths[0]), *middle, row[-1]]) + "\n"

    return "".join(render(row) for row in table)


# ---------------------------------------------------------------------------- CLI


def verify_cli(path: str | os.PathLike[str], kinds: Kinds = REQUIRED) -> int:
    """`sandbox audit verify LOG`: 0 and a summary on stdout, or 1 and LOG:LINE: message."""
    name = os.fspath(path)
    result = verify(path, kinds)
    if result.ok:
        print(f"{name}: {result.message}; head {result.head}")
        return 0
    if result.first_bad_line is None:
        print(f"{name}: {result.message}", file=sys.stderr)
    else:
        why = result.message.removeprefix(f"line {result.first_bad_line}: ")
        print(f"{name}:{result.first_bad_line}: {why}", file=sys.stderr)
    return 1


def show_cli(
    path: str | os.PathLike[str],
    agent: str | None = None,
    kind: str | None = None,
    as_json: bool = False,
    summaries: Mapping[str, Callable[[Mapping[str, Any]], str]] = SUMMARIES,
) -> int:
    """`sandbox audit show LOG [--agent NAME] [--kind KIND] [--json]`."""
    try:
        text = format_show(path, agent, kind, as_json, summaries)
    except AuditError as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{os.fspath(path)}: cannot read: {e.strerror or e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
