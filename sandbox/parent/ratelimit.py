"""Rate limiting of refusal records, so that an agent cannot use the audit log against the
system (fill the disk, or keep the parent busy writing).

A refused call in a loop wrote 2,000-2,900 records a second (8.8-9.6 MB/s) before this
existed. As the kernel's printk ratelimit and auditd's rate limit do, the first refusals
of a window are written whole and the rest are counted; when the window closes, one
`suppressed` record holds the counts. Per agent, in each window:

- at most PER_KEY whole records of one kind of refusal (a key: the call's name, with the
  parent's note if any; or a broker operation and its resource), so that one flood does
  not hide the first occurrence of another refusal;
- at most BURST whole records of all refusals together, so that cycling through many
  kinds of refusal is bounded too.

The window is WINDOW seconds, doubled (up to MAX_WINDOW) after every window in which
something was suppressed, and back to WINDOW after a quiet one: a sustained flood costs
at most BURST + 1 records per MAX_WINDOW. The keys are the parent's own words (the call's
name), never the agent's arguments, so varying an argument does not make a refusal new;
and a refusal beyond the limit costs no read of the agent's memory.

What is limited is records, never decisions: a suppressed refusal is refused (or, under
`violation: log`, let through) exactly as a recorded one. Allowed operations are never
limited: each is recorded before it takes effect (write-ahead).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable

from sandbox.parent.audit import AuditError, AuditLog

WINDOW = 5.0  # seconds: the first window, as printk's default interval
MAX_WINDOW = 60.0
PER_KEY = 32  # whole records of one key per window
BURST = 128  # whole records of all keys per window
MAX_COUNTS = 16  # keys named in a `suppressed` record; the rest are summed under "others"
MAX_KEYS = 1024  # distinct keys counted per window (op names are the agent's: bound memory)

Schedule = Callable[[float, Callable[[], None]], object]  # (monotonic time, fn), as call_at


class RateLimiter:
    """Decides which refusal records of one agent are written whole; counts the others."""

    def __init__(
        self,
        audit: AuditLog,
        pid: int,
        *,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit, self.pid, self._schedule, self._clock = audit, pid, schedule, clock
        self._mutex = threading.Lock()  # the broker's HTTP workers record refusals too
        self._length = WINDOW
        self._start = clock()
        self._written = 0
        self._per_key: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()
        self._timer_set = False

    def admit(self, key: str) -> bool:
        """True: write this refusal's record whole. False: it was counted instead."""
        with self._mutex:
            now = self._clock()
            if now >= self._start + self._length:
                self._close_locked(now)
            if self._per_key[key] < PER_KEY and self._written < BURST:
                self._per_key[key] += 1
                self._written += 1
                return True
            if key not in self._suppressed and len(self._suppressed) >= MAX_KEYS:
                key = "others"
            self._suppressed[key] += 1
            if self._schedule is not None and not self._timer_set:
                # Say it when the window ends, even if the agent falls silent.
                self._timer_set = True
                self._schedule(self._start + self._length, self.tick)
            return False

    def tick(self) -> None:
        """Close the window if it is over (a timer calls this at its end)."""
        with self._mutex:
            self._timer_set = False
            now = self._clock()
            if now >= self._start + self._length:
                self._close_locked(now)

    def flush(self) -> None:
        """Write what was suppressed so far (before the agent's exit record)."""
        with self._mutex:
            self._close_locked(self._clock())

    @property
    def window(self) -> float:
        return self._length

    def _close_locked(self, now: float) -> None:
        suppressed = self._suppressed
        if suppressed:
            self._write(suppressed, now - self._start)
            self._length = min(self._length * 2, MAX_WINDOW)
        else:
            self._length = WINDOW
        self._start = now
        self._written = 0
        self._per_key = Counter()
        self._suppressed = Counter()

    def _write(self, suppressed: Counter[str], seconds: float) -> None:
        top = suppressed.most_common(MAX_COUNTS)
        counts = dict(top)
        others = sum(suppressed.values()) - sum(counts.values())
        if others:
            counts["others"] = others
        # The refusals happened already; a log that cannot take their summary is broken,
        # and the next record that must be written ahead (an allowed operation) fails.
        with contextlib.suppress(AuditError, ValueError):
            self.audit.record(
                "suppressed",
                pid=self.pid,
                count=sum(suppressed.values()),
                window=round(seconds, 3),
                counts=counts,
            )


# What the log needs (for `doctor` and the README): a refusal record is about a kilobyte at
# most in practice (arguments are cut at 512 characters, paths in op records at 256), a
# `suppressed` record a few.
RECORD_BYTES = 1024
SUMMARY_BYTES = 4096


def flood_bytes_per_hour() -> int:
    """The log's growth from one agent refusing calls as fast as it can for an hour."""
    elapsed, length, windows = 0.0, WINDOW, 0
    while elapsed < 3600:
        elapsed += length
        windows += 1
        length = min(length * 2, MAX_WINDOW)
    return windows * (BURST * RECORD_BYTES + SUMMARY_BYTES)


def violation_key(syscall: str, note: str | None = None) -> str:
    """One kind of refused call: its name (and the parent's note, e.g. execpromises)."""
    return f"violation {syscall}" + (f" ({note})" if note else "")


def op_key(op: str, resource: str) -> str:
    return f"op {op} {resource} deny"
