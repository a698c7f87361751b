"""A real, small tmpfs mounted for a test (a disk that fills up), unmounted afterwards."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mounted_tmpfs(mnt: Path, size: str, mode: str) -> Iterator[Path]:
    """For a fixture to `yield from`: mounting needs root, so the test is skipped without."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt.mkdir()
    options = f"size={size},mode={mode}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", mnt], check=True)
