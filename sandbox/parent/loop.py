"""The parent's event loop: one selector whose registrations carry their own handlers.

Every descriptor the parent watches (a seccomp listener, a broker channel, the reaper's
status pipe, the DNS relay's sockets, the signal wake-up socket) is registered with the
callable that serves it, so the loop dispatches on nothing but the selector's own data.
Timers (the wall-clock limit, init.timeout) are a heap of deadlines. One loop serves one
agent under `sandbox run`, and every agent of a system under `sandbox up`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

Handler = Callable[[], object]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class Timer:
    """A deadline registered with call_at(); cancel() before it fires to drop it."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Handler) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._stopped = False
        self._signals: dict[int, Any] = {}
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup = -1

    # -- descriptors

    def add(self, fd: int | _HasFileno, handler: Handler) -> None:
        """Call `handler` whenever `fd` is readable."""
        self._sel.register(fd, selectors.EVENT_READ, handler)

    def remove(self, fd: int | _HasFileno) -> None:
        """Stop watching `fd` (nothing happens if it is not watched)."""
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    # -- timers

    def call_at(self, when: float, fn: Handler) -> Timer:
        """Call `fn` once at monotonic time `when`."""
        timer = Timer(when, fn)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due(self) -> None:
        now = time.monotonic()
        while self._timers and (self._timers[0][2].cancelled or self._timers[0][0] <= now):
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.fn()

    # -- signals

    def on_signals(self, signals: Iterable[int], handler: Callable[[set[int]], object]) -> None:
        """Deliver `signals` to `handler` (with the set received) from the loop, not from a
        signal handler: Python's wake-up fd carries their numbers to a socket we watch."""
        if self._wake is None:
            r, w = socket.socketpair()
            r.setblocking(False)
            w.setblocking(False)
            self._wake = (r, w)
            self._old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
            self.add(r, lambda: handler(self._drain_signals()))
        for s in signals:
            self._signals.setdefault(s, signal.signal(s, lambda *_: None))

    def _drain_signals(self) -> set[int]:
        got: set[int] = set()
        assert self._wake is not None
        with contextlib.suppress(BlockingIOError):
            while data := self._wake[0].recv(64):
                got.update(data)
        return got

    # -- running

    def stop(self) -> None:
        """Return from run() after the current turn."""
        self._stopped = True

    def run(self) -> None:
        """Serve every registered descriptor and timer until stop()."""
        self._stopped = False
        while not self._stopped:
            events = self._sel.select(self._next_timeout())
            self._run_due()
            for key, _ in events:
                if self._stopped:
                    break
                key.data()

    def close(self) -> None:
        if self._wake is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            for s, h in self._signals.items():
                signal.signal(s, h)
            self._signals.clear()
            for end in self._wake:
                end.close()
            self._wake = None
        self._sel.close()
