"""`sandbox audit show LOG [--agent] [--kind] [--since] [--until] [--json] [--follow]`.

The table and the record parser are sandbox.parent.audit's; this module adds the filters
of time and the following of a log as records arrive (like `journalctl -f`): the last ten
matching records, then every new one. Several launchers append to one log, each commit
under an exclusive flock and in whole lines, but a read can still meet the end of a line
that is being written: only lines ended by a newline are taken, the rest is read again on
the next turn. A log that is truncated or replaced (rotation) is read again from its start.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.errors import UsageError
from sandbox.parent import audit
from sandbox.plain import plain

POLL_SECONDS = 0.2
TAIL = 10  # records shown before following, as journalctl -f and tail -f do
# Fixed widths for following: rows are printed as they come, so they cannot be measured.
_FOLLOW_WIDTHS = (6, 32, 12, 9, 7)


def parse_time(text: str, what: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (`2026-12-01T08:00:00Z`; without an offset: UTC; a date alone is
    its midnight UTC), or a time relative to now: `10m`, `2h`, `1h30m`, `10m ago`, `-10m`."""
    now = now or datetime.now(UTC)
    raw = text.strip()
    rel = raw.removesuffix(" ago").removeprefix("-").strip()
    if rel and rel[0].isdigit() and not _looks_absolute(rel):
        from sandbox.policy import units

        try:
            return now - timedelta(seconds=units.parse_duration(rel))
        except units.UnitError as e:
            raise UsageError(f"{what} '{text[:80]}': {e}") from None
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"{what} '{text[:80]}' is not a time: give RFC 3339 (2026-12-01T08:00:00Z), "
            "a date (2026-12-01) or a time back from now (10m, 2h, 1d)"
        ) from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _looks_absolute(text: str) -> bool:
    return len(text) >= 10 and text[4] == "-" and text[7] == "-"


@plain(frozen=True)
class Filter:
    agent: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def make(
        cls, agent: str | None, kind: str | None, since: str | None, until: str | None
    ) -> Filter:
        if kind is not None and kind not in audit.REQUIRED:
            from sandbox.policy.schema import suggest

            known = ", ".join(audit.REQUIRED)
            raise UsageError(
                f"--kind: unknown kind '{kind}'{suggest(kind, audit.REQUIRED)} (known: {known})"
            )
        start = None if since is None else parse_time(since, "--since")
        end = None if until is None else parse_time(until, "--until")
        if start is not None and end is not None and end <= start:
            raise UsageError("--until must be later than --since")
        return cls(agent, kind, start, end)

    def keep_time(self, record: Mapping[str, Any]) -> bool:
        if self.since is None and self.until is None:
            return True
        try:
            stamp = datetime.fromisoformat(str(record.get("time")))
        except ValueError:
            return False  # a record without a valid time matches no time filter
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return (self.since is None or stamp >= self.since) and (
            self.until is None or stamp < self.until
        )

    def keep(self, record: Mapping[str, Any]) -> bool:
        return (
            (self.agent is None or record.get("agent") == self.agent)
            and (self.kind is None or record.get("kind") == self.kind)
            and self.keep_time(record)
        )


def show(path: str, filt: Filter, *, as_json: bool = False, follow: bool = False) -> int:
    """The records of `path` that `filt` keeps; with `follow`, then every new one."""
    try:
        if follow:
            return _follow(path, filt, as_json)
        text = audit.format_show(path, filt.agent, filt.kind, as_json, keep=filt.keep_time)
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_pipe()
    except audit.AuditError as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def _render(line: bytes, record: Mapping[str, Any], as_json: bool) -> str:
    return line.decode("utf-8") + "\n" if as_json else _row_text(audit.show_row(record))


def _row_text(row: tuple[str, ...]) -> str:
    widths = _FOLLOW_WIDTHS
    middle = (c.ljust(w) for c, w in zip(row[1:-1], widths[1:], strict=True))
    return "  ".join([row[0].rjust(widths[0]), *middle, row[-1]]) + "\n"


def _quiet_pipe() -> int:
    # The reader went away (`| head`): nothing more to say, and nothing on stderr.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def _follow(path: str, filt: Filter, as_json: bool) -> int:
    out = sys.stdout
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    ident = os.fstat(fd)
    offset = 0
    lineno = 0
    pending = b""
    first = True
    backlog: deque[str] = deque(maxlen=None if filt.since is not None else TAIL)
    if not as_json:
        out.write(_row_text(audit.SHOW_COLUMNS))
    try:
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if chunk:
                offset += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    lineno += 1
                    record = audit._parse(line)
                    if isinstance(record, str):  # why it is not a record
                        print(f"{path}:{lineno}: {record}; skipped", file=sys.stderr)
                        continue
                    if filt.keep(record):
                        text = _render(line, record, as_json)
                        if first:
                            backlog.append(text)
                        else:
                            out.write(text)
                if len(chunk) == 1 << 20:
                    continue  # more to read now
            if first:
                out.writelines(backlog)
                backlog.clear()
                first = False
            out.flush()
            time.sleep(POLL_SECONDS)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue  # being replaced; the new file is picked up when it appears
            if (now.st_ino, now.st_dev) != (ident.st_ino, ident.st_dev) or now.st_size < offset:
                # Rotated or truncated: read the new contents from their start.
                try:
                    new = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = new
                ident, offset, lineno, pending = os.fstat(fd), 0, 0, b""
    except KeyboardInterrupt:
        out.flush()
        return 0
    except BrokenPipeError:
        return _quiet_pipe()
    finally:
        os.close(fd)
