"""pytest plugin (entry point `pytest11`): the fixture `sandbox_run`, and `--sandbox-serve`.

def test_my_agent(sandbox_run):
    r = sandbox_run(["python3", "agent.py"], policy="policies/agent.yaml")
    assert r.status == 0
    sandbox.testing.assert_denied(r, syscall="connect", promise="inet")

`pytest --sandbox-serve` (or SANDBOX_TEST_SERVE=1) starts a warm launcher (`sandbox serve`)
for the session and points SANDBOX_SERVER at it, so every `sandbox run` the tests start
goes through it; a summary at the end says how many launches it served and refused.
Running a suite both ways shows that warm and cold launches give the same results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.testing import Result, run_sandboxed

SERVE_ENV = "SANDBOX_TEST_SERVE"
_stats: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sandbox-serve",
        action="store_true",
        default=os.environ.get(SERVE_ENV, "") not in ("", "0"),
        help="run every `sandbox run` of the session through one warm launcher (sandbox serve)",
    )


@pytest.fixture
def sandbox_run(tmp_path: Path) -> Callable[..., Result]:
    """Run a command or a Python function under a policy; see sandbox.testing.run_sandboxed."""

    def runner(command: Any = None, **kwargs: Any) -> Result:
        kwargs.setdefault("workdir", tmp_path)
        return run_sandboxed(command, **kwargs)

    return runner


@pytest.fixture(scope="session", autouse=True)
def _sandbox_serve(request: pytest.FixtureRequest) -> Iterator[None]:
    if not request.config.getoption("--sandbox-serve"):
        yield
        return
    # A short path of our own: a socket's path may not exceed 107 bytes.
    directory = tempfile.mkdtemp(prefix="sandbox-serve-")
    path = os.path.join(directory, "serve.sock")
    log_path = os.path.join(directory, "serve.log")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--socket", path],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    if not line.startswith("listening"):
        server.kill()
        raise pytest.UsageError(f"sandbox serve did not start: {Path(log_path).read_text()}")
    old = os.environ.get("SANDBOX_SERVER")
    os.environ["SANDBOX_SERVER"] = path
    os.environ["SANDBOX_TEST_SERVER_PID"] = str(server.pid)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SANDBOX_SERVER", None)
        else:
            os.environ["SANDBOX_SERVER"] = old
        os.environ.pop("SANDBOX_TEST_SERVER_PID", None)
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        lines = Path(log_path).read_text(errors="replace").splitlines()
        _stats["summary"] = next((x for x in reversed(lines) if "stopped after" in x), "")
        _stats["refused"] = [x for x in lines if "refused a launch" in x]
        _stats["log"] = log_path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _stats:
        return
    terminalreporter.write_sep("-", "sandbox serve")
    terminalreporter.write_line(_stats["summary"] or "the warm launcher said nothing")
    reasons: dict[str, int] = {}
    for line in _stats["refused"]:
        why = line.split(": ", 2)[-1]
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  refused {n}x: {why}")
    terminalreporter.write_line(f"  log: {_stats['log']}")
