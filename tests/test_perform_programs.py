"""Real programs that need the path-form calls the parent performs: `cp -p`, `tar xf` with
modes and times, `install -m`, `touch -d`, `git init` and `python3 -m venv`, each under the
tightest policy that fits, checked from the host (modes, times, files), each with its
control: the same task without 'fattr' is refused, and the message names it.

As root, and as the unprivileged test user (through tests/progs/asuser.py).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from progs import asuser
from progs.kit import PY, ROOT

from sandbox.enforce import promises as P
from sandbox.enforce import syscalls as S
from sandbox.testing import write_policy

TEST_USER = asuser.TEST_USER
T2001 = 981173106  # 2001-02-03 04:05:06 UTC


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


@pytest.fixture(params=["root", TEST_USER])
def as_user(request: pytest.FixtureRequest) -> str:
    if request.param == "root" and os.geteuid() != 0:
        pytest.skip("not root")
    return str(request.param)


@pytest.fixture
def work(as_user: str, tmp_path: Path) -> Iterator[Path]:
    """A work tree for the task, owned by the user who runs it (the test user's through
    the harness of tests/progs/asuser.py)."""
    if as_user == "root":
        d = tmp_path / "work"
        d.mkdir()
    else:
        harness = asuser.as_user(tmp_path)
        d = harness.work
        _HARNESS[d] = harness
    (d / "src").mkdir()
    (d / "dst").mkdir()
    yield d
    _HARNESS.pop(d, None)


_HARNESS: dict[Path, asuser.AsUser] = {}  # the test user's harness, by its work directory


def _own(d: Path, user: str) -> None:
    if user != "root" and os.geteuid() == 0:
        u = asuser.unprivileged_user()
        for p in [d, *d.rglob("*")]:
            os.lchown(p, u.uid, u.gid)


def run(work: Path, user: str, pledge: str, unveil: dict[str, str], cmd: list[str],
        env: dict[str, str] | None = None) -> Run:  # fmt: skip
    policy: dict[str, Any] = {
        "version": 1,
        "name": "prog",
        "pledge": pledge,
        "unveil": {"@system": "rx", **unveil},
        "violation": "kill",
    }
    if env:
        policy["env"] = {"keep": ["PATH", "LANG"], "set": env}
    _own(work, user)
    if user != "root":
        r = _HARNESS[work].sandbox(cmd, policy=policy, base_unveil=False)
        return Run(r.status, r.stdout, r.stderr)
    path = write_policy(work, policy, "prog")
    argv = [PY, "-m", "sandbox", "run", path, "--audit-log", str(work / "audit.jsonl"), "--", *cmd]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=work,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return Run(p.returncode, p.stdout, p.stderr)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _refused_without(r: Run, promise: str) -> None:
    assert r.status == 159, r
    assert "pledge violation" in r.stderr and f"'{promise}" in r.stderr, r.stderr


FS = "stdio rpath wpath cpath fattr"


def _reflink_allowed() -> bool:
    """cp and install clone first (FICLONE); whether wpath allows that ioctl yet."""
    ficlone = getattr(S, "FICLONE", 0x40049409)
    return any(
        r.syscall == "ioctl" and r.action == "allow" and any(a.value == ficlone for a in r.args)
        for r in P.rules_for({"wpath"})
    )


def test_cp_p_preserves_modes_and_times(work: Path, as_user: str) -> None:
    src, dst = work / "src", work / "dst"
    (src / "a").write_text("a")
    (src / "a").chmod(0o640)
    os.utime(src / "a", (T2001, T2001))
    (src / "tool").write_text("#!/bin/sh\n")
    (src / "tool").chmod(0o4755)
    cp = ["cp", "-p"] if _reflink_allowed() else ["cp", "--reflink=never", "-p"]
    cmd = [*cp, str(src / "a"), str(src / "tool"), str(dst)]
    r = run(work, as_user, FS, {str(src): "r", str(dst): "rwc"}, cmd)
    assert r.status == 0, r
    assert _mode(dst / "a") == 0o640 and int((dst / "a").stat().st_mtime) == T2001
    assert _mode(dst / "tool") == 0o755  # setuid stripped, the rest preserved
    for f in dst.iterdir():
        f.unlink()
    _refused_without(
        run(work, as_user, "stdio rpath wpath cpath", {str(src): "r", str(dst): "rwc"}, cmd),
        "fattr",
    )


def test_tar_x_restores_modes_and_times(work: Path, as_user: str) -> None:
    src, dst = work / "src", work / "dst"
    (src / "tree").mkdir()
    (src / "tree" / "script").write_text("#!/bin/sh\necho hi\n")
    (src / "tree" / "script").chmod(0o750)
    (src / "tree" / "data").write_text("data")
    (src / "tree" / "data").chmod(0o604)
    (src / "tree" / "suid").write_text("x")
    (src / "tree" / "suid").chmod(0o4711)
    (src / "tree" / "link").symlink_to("data")
    for p in [*(src / "tree").iterdir(), src / "tree"]:
        os.utime(p, (T2001, T2001), follow_symlinks=False)
    archive = work / "a.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src / "tree", arcname="tree")
    cmd = ["tar", "xpf", str(archive), "-C", str(dst)]
    unveil = {str(archive): "r", str(dst): "rwc"}
    r = run(work, as_user, f"{FS} getpw", unveil, cmd)
    assert r.status == 0, r
    out = dst / "tree"
    assert (_mode(out / "script"), _mode(out / "data"), _mode(out / "suid")) == (
        0o750,
        0o604,
        0o711,
    )
    assert all(int(p.lstat().st_mtime) == T2001 for p in out.iterdir()), [
        (p.name, p.lstat().st_mtime) for p in out.iterdir()
    ]
    assert os.readlink(out / "link") == "data"
    shutil.rmtree(out)
    _refused_without(run(work, as_user, "stdio rpath wpath cpath getpw", unveil, cmd), "fattr")


def test_install_m(work: Path, as_user: str) -> None:
    if not _reflink_allowed():
        pytest.skip(
            "install clones with FICLONE, which no promise allows yet (issue 9: clone ioctls)"
        )
    src, dst = work / "src", work / "dst"
    (src / "prog").write_text("#!/bin/sh\n")
    cmd = ["install", "-m", "4750", str(src / "prog"), str(dst / "prog")]
    r = run(work, as_user, FS, {str(src): "r", str(dst): "rwc"}, cmd)
    assert r.status == 0, r
    assert _mode(dst / "prog") == 0o750
    (dst / "prog").unlink()
    _refused_without(
        run(work, as_user, "stdio rpath wpath cpath", {str(src): "r", str(dst): "rwc"}, cmd),
        "fattr",
    )


def test_touch_d_and_touch_h(work: Path, as_user: str) -> None:
    """touch -d on a file; touch -h on a symlink (utimensat with AT_SYMLINK_NOFOLLOW: a
    path form, performed by the parent on the symlink itself)."""
    dst = work / "dst"
    (dst / "f").write_text("f")
    (dst / "l").symlink_to("f")
    os.utime(dst / "f", (0, 0))
    cmd = ["touch", "-h", "-d", "2001-02-03 04:05:06 UTC", str(dst / "f"), str(dst / "l")]
    r = run(work, as_user, FS, {str(dst): "rwc"}, cmd)
    assert r.status == 0, r
    assert int((dst / "f").stat().st_mtime) == T2001
    assert int((dst / "l").lstat().st_mtime) == T2001
    _refused_without(run(work, as_user, "stdio rpath wpath cpath", {str(dst): "rwc"}, cmd), "fattr")


def test_git_init(work: Path, as_user: str) -> None:
    dst = work / "dst"
    env = {"HOME": str(dst), "GIT_CONFIG_NOSYSTEM": "1"}
    cmd = ["git", "init", "-q", str(dst / "repo")]
    r = run(work, as_user, f"{FS} getpw", {str(dst): "rwc"}, cmd, env)
    assert r.status == 0, r
    git = dst / "repo" / ".git"
    assert (git / "HEAD").read_text().startswith("ref: refs/heads/")
    assert "filemode = true" in (git / "config").read_text()  # git's chmod probe worked
    assert _mode(next((git / "hooks").glob("*.sample"))) & 0o111
    shutil.rmtree(dst / "repo")
    _refused_without(
        run(work, as_user, "stdio rpath wpath cpath getpw", {str(dst): "rwc"}, cmd, env), "fattr"
    )


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3")
def test_python_venv(work: Path, as_user: str) -> None:
    dst = work / "dst"
    cmd = ["/usr/bin/python3", "-m", "venv", "--without-pip", str(dst / "venv")]
    r = run(work, as_user, f"{FS} getpw", {str(dst): "rwc"}, cmd)
    assert r.status == 0, r
    venv = dst / "venv"
    assert os.path.islink(venv / "bin" / "python3") and (venv / "pyvenv.cfg").exists()
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                           capture_output=True, text=True)  # fmt: skip
    assert check.stdout.strip() == str(venv), check
    shutil.rmtree(venv)
    _refused_without(
        run(work, as_user, "stdio rpath wpath cpath getpw", {str(dst): "rwc"}, cmd), "fattr"
    )
