"""Suite-wide set-up. Under `pytest --sandbox-serve` (the plugin starts a warm launcher for
the session, serving this uid only: SO_PEERCRED), a second warm launcher runs as the
unprivileged test user, so that the runs tests/progs/asuser.py makes as that user go warm
too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from progs.asuser import _switch, clean_env, unprivileged_user

_served: dict[str, str] = {}


@pytest.fixture(scope="session", autouse=True)
def _test_user_server(request: pytest.FixtureRequest) -> Iterator[None]:
    if not request.config.getoption("--sandbox-serve") or os.geteuid() != 0:
        yield
        return
    try:
        user = unprivileged_user()
    except AssertionError:  # no test user: its tests say so themselves
        yield
        return
    directory = Path(tempfile.mkdtemp(prefix="sandbox-serve-user-"))
    os.chown(directory, user.uid, user.gid)
    path, log_path = directory / "serve.sock", directory / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*_switch(), sys.executable, "-m", "sandbox", "serve", "--socket", str(path), "-v"],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            cwd="/",
        )
    assert server.stdout is not None
    if not server.stdout.readline().startswith(b"listening"):
        server.kill()
        raise pytest.UsageError(f"the test user's sandbox serve did not start: {log_path}")
    os.environ["SANDBOX_TEST_USER_SERVER"] = str(path)
    try:
        yield
    finally:
        os.environ.pop("SANDBOX_TEST_USER_SERVER", None)
        server.terminate()
        server.wait(30)
        text = log_path.read_text(errors="replace")
        _served["launches"] = str(len(re.findall(r"^sandbox serve: launch \d+ for", text, re.M)))
        _served["refused"] = str(text.count("refused a launch"))
        _served["log"] = str(log_path)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _served:
        terminalreporter.write_line(
            f"sandbox serve as the test user: {_served['launches']} warm launches "
            f"({_served['refused']} refused); log: {_served['log']}"
        )
