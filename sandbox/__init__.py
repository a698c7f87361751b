"""outheis-sandbox: pledge, unveil and privilege separation for agents on Linux.

The agent-side API is imported lazily so that `import sandbox` stays cheap for the launcher.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["connect", "pledge", "unveil"]


def __getattr__(name: str) -> Any:
    if name in ("pledge", "unveil"):
        import importlib

        return getattr(importlib.import_module("sandbox.agent.pledge"), name)
    if name == "connect":
        from sandbox.agent.client import connect

        return connect
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
