"""Run `sandbox run` (or anything) as the unprivileged test user, in one call.

    from progs.asuser import as_user

    def test_x(tmp_path):
        u = as_user(tmp_path)                    # a work directory the user owns
        u.write("in.txt", "hello")
        r = u.sandbox(["cat", "in.txt"], promises="stdio rpath", unveil=["/usr:rx", "."])
        assert r.status == 0 and r.stdout == "hello"   # r: sandbox.testing.Result

The user is `sandboxtest` (ci/setup creates it; SANDBOX_TEST_USER overrides). As root the
command runs under setpriv with that user's uid, gid and no supplementary groups, no
capability (as a login of that user has), a clean environment (HOME, USER, LOGNAME, PATH,
LANG and what `env` adds) and its work directory as cwd. When the suite itself runs as an
ordinary user, the commands run as that user directly: the point, an unprivileged
launcher, holds either way.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.testing import Result, python_command, write_policy

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable
TEST_USER = os.environ.get("SANDBOX_TEST_USER", "sandboxtest")
BASE_UNVEIL = ("@python:rx", "@system:rx")
_count = itertools.count()


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


@functools.lru_cache(maxsize=1)
def unprivileged_user() -> User:
    """The unprivileged user the commands run as (the current one unless we are root)."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
    else:
        try:
            pw = pwd.getpwnam(TEST_USER)
        except KeyError:
            raise AssertionError(
                f"the unprivileged test user {TEST_USER!r} does not exist: run ./ci/setup"
            ) from None
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _switch() -> list[str]:
    if os.geteuid() != 0:
        return []
    u = unprivileged_user()
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={u.uid}", f"--regid={u.gid}", "--clear-groups", "--"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    u = unprivileged_user()
    env = {
        "HOME": u.home,
        "USER": u.name,
        "LOGNAME": u.name,
        "PATH": f"{Path(PY).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if "SANDBOX_TEST_USER_SERVER" in os.environ:  # pytest --sandbox-serve (tests/conftest.py)
        env["SANDBOX_SERVER"] = os.environ["SANDBOX_TEST_USER_SERVER"]
    env.update(extra or {})
    return env


def _open_path_to(directory: Path) -> None:
    """Let the user reach `directory`: pytest makes its temporary directories 0700."""
    for p in (directory, *directory.parents):
        if p == Path("/"):
            break
        mode = p.stat().st_mode
        if not mode & 0o001 and p.stat().st_uid == os.geteuid():
            p.chmod(mode | 0o001)


@functools.lru_cache(maxsize=1)
def _check_usable() -> None:
    """The venv and this checkout must be usable by the user (ci/setup sees to the venv)."""
    mode = os.stat("/dev/null").st_mode & 0o7777
    if mode != 0o666:
        # Seen on the shared test machine: a test as root changed it through a descriptor.
        raise AssertionError(
            f"/dev/null has mode {mode:04o}, not 0666: ordinary users' programs fail on it "
            "(ldconfig, subprocess); a process running as root changed it (chmod 666 /dev/null)"
        )
    p = subprocess.run(
        [*_switch(), PY, "-c", "import sandbox, pyseccomp, prctl, yaml"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd="/",
        timeout=60,
    )
    if p.returncode != 0:
        raise AssertionError(
            f"{PY} cannot run the sandbox as {unprivileged_user().name}: {p.stderr.strip()}\n"
            "./ci/setup makes .venv from an interpreter every user can run; the checkout "
            f"{ROOT} must be readable by that user too"
        )


class AsUser:
    """A work directory owned by the test user, and commands run as that user in it."""

    def __init__(self, base: Path) -> None:
        _check_usable()
        self.user = unprivileged_user()
        self.work = base / f"as-{self.user.name}-{next(_count)}"
        self.work.mkdir()
        self._own(self.work)
        _open_path_to(base)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.user.uid, self.user.gid, follow_symlinks=False)

    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def mkdir(self, rel: str) -> Path:
        p = self.path(rel)
        p.mkdir(parents=True, exist_ok=True)
        for q in (p, *p.parents):
            if q == self.work:
                break
            self._own(q)
        return p

    def write(self, rel: str, data: str | bytes, mode: int | None = None) -> Path:
        p = self.path(rel)
        if Path(rel).parent != Path("."):
            self.mkdir(str(Path(rel).parent))
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
        if mode is not None:
            p.chmod(mode)
        self._own(p)
        return p

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start `argv` as the user (in the work directory, clean environment)."""
        return subprocess.Popen(
            [*_switch(), *argv], env=clean_env(env), cwd=self.work, text=True, **kw
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run any command as the user: the control runs (the same task, unsandboxed)."""
        return subprocess.run(
            [*_switch(), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env=clean_env(env),
            cwd=self.work,
            timeout=timeout,
        )

    def sandbox_argv(
        self,
        command: Sequence[str] | Callable[..., Any] | None = None,
        *,
        policy: Mapping[str, Any] | str | None = None,
        promises: str | None = None,
        unveil: Sequence[str] = (),
        base_unveil: bool = True,
        extra_args: Sequence[str] = (),
    ) -> tuple[list[str], Path]:
        """The `sandbox run` command line (and its audit log); `base_unveil` adds the
        interpreter's paths (@python, @system) to -v, or to a policy dict's unveil."""
        n = next(_count)
        log = self.path(f"audit-{n}.jsonl")
        argv = [PY, "-m", "sandbox", "run"]
        if isinstance(policy, Mapping):
            full = dict(policy)
            full.setdefault("version", 1)
            full.setdefault("name", f"user{n}")
            if base_unveil:
                full["unveil"] = {
                    **{b.split(":")[0]: "rx" for b in BASE_UNVEIL},
                    **dict(full.get("unveil") or {}),
                }
            argv.append(self._own_file(write_policy(self.work, full, f"policy{n}")))
        elif policy is not None:
            argv.append(policy)
        if promises is not None:
            argv += ["-p", promises]
        for u in (
            *(BASE_UNVEIL if base_unveil and not isinstance(policy, Mapping) else ()),
            *unveil,
        ):
            argv += ["-v", u]
        argv += ["--audit-log", str(log), *extra_args]
        if command is not None:
            argv += ["--", *(python_command(command) if callable(command) else command)]
        return argv, log

    def _own_file(self, path: str) -> str:
        self._own(Path(path))
        return path

    def sandbox(
        self,
        command: Sequence[str] | Callable[..., Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 60,
        **how: Any,
    ) -> Result:
        """`sandbox run` as the user. `how`: policy (a dict, written to a file the user
        owns, or a path), promises, unveil, base_unveil, extra_args, as for sandbox_argv;
        `command` as for sandbox.testing.run_sandboxed."""
        argv, log = self.sandbox_argv(command, **how)
        p = self.run(argv, env=env, stdin=stdin, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr, read_log(log), str(log))


def read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def as_user(base: Path) -> AsUser:
    """The one call: a work directory under `base` (a test's tmp_path) owned by the test
    user, with run()/sandbox() running commands as that user there."""
    return AsUser(base)
