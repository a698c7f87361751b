"""The parent's event loop: one selector whose registrations carry their own handlers.

Every descriptor the parent watches (a seccomp listener, a broker channel, the reaper's
status pipe, the DNS relay's sockets, the signal wake-up socket) is registered with the
callable that serves it, so the loop dispatches on nothing but the selector's own data.
Timers (the wall-clock limit, init.timeout) are a heap of deadlines. One loop serves one
agent under `sandbox run`, and every agent of a system under `sandbox up`.

No exception leaves a handler: the loop is where every handler is called, so it is where
they are guarded. A handler that raises is reported to the error handler of its
registration (the agent's Launch records it in that agent's audit log) or of the loop, and
the loop goes on serving everything else. A descriptor whose handler keeps failing is no
longer watched after MAX_FAILURES failures in a row (a level-triggered descriptor would
otherwise spin the loop), and its error handler is told so, so that its owner can end
what it can no longer serve (fail closed).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from sandbox.plain import plain

Handler = Callable[[], object]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


MAX_FAILURES = 8  # failures in a row of one descriptor's handler before it is dropped


@plain(frozen=True)
class Failure:
    """A handler that raised: where (its name), the exception, and whether the loop stopped
    watching its descriptor because of it."""

    where: str
    error: Exception
    removed: bool = False


ErrorHandler = Callable[[Failure], object]


def print_failure(failure: Failure) -> None:
    """The default error handler: one line on stderr (the loop has no audit log)."""
    gave_up = "; no longer served" if failure.removed else ""
    err = failure.error
    print(
        f"sandbox: internal error in {failure.where}: {type(err).__name__}: {err}{gave_up}",
        file=sys.stderr,
    )


class _Registration:
    __slots__ = ("failures", "fd", "handler", "on_error", "where")

    def __init__(
        self, fd: int | _HasFileno, handler: Handler, on_error: ErrorHandler | None, where: str
    ) -> None:
        self.fd, self.handler, self.on_error, self.where = fd, handler, on_error, where
        self.failures = 0


class Timer:
    """A deadline registered with call_at(); cancel() before it fires to drop it."""

    __slots__ = ("cancelled", "fn", "on_error", "when")

    def __init__(self, when: float, fn: Handler, on_error: ErrorHandler | None = None) -> None:
        self.when, self.fn, self.cancelled, self.on_error = when, fn, False, on_error

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, on_error: ErrorHandler = print_failure) -> None:
        self.on_error = on_error  # for registrations without an error handler of their own
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._stopped = False
        self._signals: dict[int, Any] = {}
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup = -1
        self._priority: dict[int, int] = {}  # fd -> rank; lower is served first in a turn

    # -- descriptors

    def add(
        self,
        fd: int | _HasFileno,
        handler: Handler,
        on_error: ErrorHandler | None = None,
        where: str | None = None,
    ) -> None:
        """Call `handler` whenever `fd` is readable; `on_error` gets its failures."""
        name = where or getattr(handler, "__qualname__", None) or repr(handler)
        self._sel.register(fd, selectors.EVENT_READ, _Registration(fd, handler, on_error, name))

    def remove(self, fd: int | _HasFileno) -> None:
        """Stop watching `fd` (nothing happens if it is not watched)."""
        with contextlib.suppress(KeyError, ValueError):
            self._priority.pop(self._sel.unregister(fd).fd, None)

    def set_priority(self, fd: int, rank: int) -> None:
        """Serve `fd` before descriptors of a higher rank when both are ready in one turn
        (the dispatcher serves interactive agents before background ones: GCD's QoS)."""
        self._priority[fd] = rank

    # -- timers

    def call_at(self, when: float, fn: Handler, on_error: ErrorHandler | None = None) -> Timer:
        """Call `fn` once at monotonic time `when`."""
        timer = Timer(when, fn, on_error)
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
                try:
                    timer.fn()
                except Exception as e:  # a failing timer must not stop the others
                    where = getattr(timer.fn, "__qualname__", "a timer")
                    self._report(timer.on_error, Failure(where, e))

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
            if self._priority and len(events) > 1:
                events.sort(key=lambda ev: self._priority.get(ev[0].fd, 0))
            registered = self._sel.get_map()
            for key, _ in events:
                if self._stopped:
                    break
                # A handler earlier in this turn may have closed a descriptor, and a new
                # one (another agent's, under the dispatcher) may have its number now: an
                # event for a key no longer registered is stale and must not run.
                if registered.get(key.fd) is key:
                    self._dispatch(key.data)

    def _dispatch(self, reg: _Registration) -> None:
        try:
            reg.handler()
        except Exception as e:  # no exception leaves a handler: see the module's docstring
            reg.failures += 1
            removed = reg.failures >= MAX_FAILURES
            if removed:
                self.remove(reg.fd)
            self._report(reg.on_error, Failure(reg.where, e, removed))
        else:
            reg.failures = 0

    def _report(self, on_error: ErrorHandler | None, failure: Failure) -> None:
        try:
            (on_error or self.on_error)(failure)
        except Exception as e:  # the error handler failed too: say both, go on
            print_failure(failure)
            print_failure(Failure("the error handler", e))

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
