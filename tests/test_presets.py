"""The preset policies under policies/presets: valid, and each does what it says."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from sandbox.policy.loader import check_files
from sandbox.testing import Result, assert_denied, run_sandboxed

PRESETS = Path(__file__).resolve().parent.parent / "policies" / "presets"
VENV_BIN = os.path.dirname(sys.executable)


def test_every_preset_is_valid() -> None:
    files = sorted(str(p) for p in PRESETS.glob("*.yaml"))
    assert len(files) >= 3
    assert check_files(files) == (0, [])


def _run(tmp_path: Path, preset: str, command: list[str]) -> Result:
    copy = tmp_path / "presets"
    if not copy.exists():
        shutil.copytree(PRESETS, copy)
    env = dict(os.environ, PATH=f"{VENV_BIN}:/usr/bin:/bin")
    return run_sandboxed(command, policy=copy / preset, workdir=copy, env=env)


def test_readonly_tool_reads_and_cannot_write(tmp_path: Path) -> None:
    ok = _run(tmp_path, "readonly-tool.yaml", ["ls", "/usr"])
    assert ok.status == 0 and "bin" in ok.stdout.split(), ok
    refused = _run(tmp_path, "readonly-tool.yaml", ["touch", str(tmp_path / "x")])
    assert refused.status == 159, refused
    assert_denied(refused, syscall="openat", promise="wpath cpath", action="kill")
    assert not (tmp_path / "x").exists()


SCRIPT = """
import socket
with open("work/out.txt", "w") as f:
    f.write("written")
print(open("work/out.txt").read(), flush=True)
try:
    open("script.py", "a")
except OSError as e:
    print("outside work:", e.errno, flush=True)
socket.socket()
"""


def test_python_no_network_writes_work_only_and_has_no_network(tmp_path: Path) -> None:
    (PRESETS / "script.py").exists() and pytest.fail("stray script.py in policies/presets")
    copy = tmp_path / "presets"
    shutil.copytree(PRESETS, copy)
    (copy / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PATH=f"{VENV_BIN}:/usr/bin:/bin")
    r = run_sandboxed(None, policy=copy / "python-no-network.yaml", workdir=copy, env=env)
    assert "written" in r.stdout and "outside work: 13" in r.stdout, r
    assert (copy / "work" / "out.txt").read_text() == "written"
    assert r.status == 159
    assert_denied(r, syscall="socket", promise="inet", action="kill")
