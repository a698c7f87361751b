"""Pieces shared by several test files: policies for a Python agent, and agent helpers."""

from __future__ import annotations

import sys
from typing import Any

# attempt(name, fn) prints {name: ["ok", value]} or {name: [errno, message]}, flushed.
ATTEMPT = """
def attempt(name, fn):
    try:
        res = ["ok", fn()]
    except OSError as e:
        res = [e.errno, str(e)]
    print(json.dumps({name: res}), flush=True)
def read(p):
    with open(p) as f:
        return f.read()
def create(p):
    with open(p, "w") as f:
        f.write("x")
    return True
"""


def python_policy(name: str, pledge: str = "stdio rpath", **extra: Any) -> dict[str, Any]:
    """A policy under which the venv's Python can start (its files unveiled rx)."""
    p: dict[str, Any] = {
        "version": 1,
        "name": name,
        "pledge": pledge,
        "unveil": {"@python": "rx", "@system": "rx"},
    }
    p.update(extra)
    return p


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]
