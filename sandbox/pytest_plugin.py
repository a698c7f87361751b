"""pytest plugin (entry point `pytest11`): the fixture `sandbox_run`.

def test_my_agent(sandbox_run):
    r = sandbox_run(["python3", "agent.py"], policy="policies/agent.yaml")
    assert r.status == 0
    sandbox.testing.assert_denied(r, syscall="connect", promise="inet")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.testing import Result, run_sandboxed


@pytest.fixture
def sandbox_run(tmp_path: Path) -> Callable[..., Result]:
    """Run a command or a Python function under a policy; see sandbox.testing.run_sandboxed."""

    def runner(command: Any = None, **kwargs: Any) -> Result:
        kwargs.setdefault("workdir", tmp_path)
        return run_sandboxed(command, **kwargs)

    return runner
