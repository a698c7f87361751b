"""Reading /proc/PID/status: one parser for the launcher, the supervisor and the agent API."""

from __future__ import annotations


def status_field(path: str, key: str) -> list[str] | None:
    """The whitespace-split values of `key:` in a status file, None if the key is absent.

    OSError propagates: callers that must fail closed (capability checks) rely on it.
    """
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name == key:
                return rest.split()
    return None


def status_int(path: str, key: str, *, last: bool = False) -> int | None:
    """One integer of `key:` (the first, or with `last` the innermost namespace's), None
    if the file or the key is gone (a process that exited meanwhile)."""
    try:
        values = status_field(path, key)
        return int(values[-1] if last else values[0]) if values else None
    except (OSError, ValueError):
        return None
