"""The machinery of the corpus of real programs (tests/test_corpus.py): a recipe (a task's
policy, as data), a work directory owned by the user who runs the task, `sandbox run` of a
recipe as that user (root, or the unprivileged test user through progs/asuser.py), and
what a control must show.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from progs import asuser
from sandbox.testing import Result, write_policy

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent.parent
VIOLATION_EXIT = 159
_n = itertools.count()


@dataclass(frozen=True)
class Recipe:
    """A policy for one task. Unveil keys are relative to the work directory (where the
    policy file is written) or absolute; `{work}` in env values and `{port}` in network
    rules are filled in per run."""

    task: str  # what the program does, for the README
    pledge: str
    unveil: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    network: Mapping[str, Sequence[int | str]] | None = None
    violation: str = "kill"
    optional: frozenset[str] = frozenset()  # unveil keys that may be missing on a host
    needs: str = ""  # why, in a sentence, for the README

    def policy(self, work: Path, port: int | None = None) -> dict[str, Any]:
        unveil: dict[str, Any] = {"@system": "rx"}
        for path, perms in self.unveil.items():
            unveil[path] = {"perms": perms, "optional": True} if path in self.optional else perms
        out: dict[str, Any] = {
            "version": 1,
            "name": "corpus",
            "pledge": self.pledge,
            "unveil": unveil,
            "violation": self.violation,
        }
        if self.env:
            env = {k: v.replace("{work}", str(work)) for k, v in self.env.items()}
            out["env"] = {"keep": ["PATH", "LANG", "HOME"], "set": env}
        if self.network is not None:
            out["network"] = {
                k: [int(str(p).replace("{port}", str(port))) for p in v]
                for k, v in self.network.items()
            }
        return out

    def without(self, promise: str = "", unveil: str = "", **changes: Any) -> Recipe:
        """The control: the same recipe with one promise or one unveil less."""
        pledge = " ".join(p for p in self.pledge.split() if p != promise)
        left = {k: v for k, v in self.unveil.items() if k != unveil}
        return replace(self, pledge=pledge, unveil=left, **changes)

    def letters(self, path: str, perms: str) -> Recipe:
        """The control: the same recipe with `path` unveiled with fewer letters."""
        return replace(self, unveil={**self.unveil, path: perms})


# --- a work directory and its user -------------------------------------------------------


@dataclass
class Work:
    """A work directory owned by the user who runs the task, and runs of `sandbox run` as
    that user in it."""

    who: str
    dir: Path
    harness: asuser.AsUser | None = None

    def _own(self, p: Path) -> None:
        if self.harness is not None and os.geteuid() == 0:
            u = asuser.unprivileged_user()
            st = p.lstat()
            if (st.st_uid, st.st_gid) != (u.uid, u.gid):  # a chown clears setuid bits
                os.lchown(p, u.uid, u.gid)

    def own_all(self) -> None:
        for p in [self.dir, *self.dir.rglob("*")]:
            self._own(p)

    def mkdir(self, *rels: str) -> None:
        for rel in rels:
            (self.dir / rel).mkdir(parents=True, exist_ok=True)
        self.own_all()

    def write(self, rel: str, text: str | bytes, mode: int | None = None) -> Path:
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        self.own_all()
        if mode is not None:
            p.chmod(mode)
        return p

    def env(self) -> dict[str, str]:
        if self.harness is not None:
            return asuser.clean_env()
        return {
            "HOME": os.environ.get("HOME", "/root"),
            "PATH": f"{Path(PY).parent}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(
        self,
        recipe: Recipe,
        command: Sequence[str],
        *,
        trace: bool = False,
        port: int | None = None,
        timeout: float = 180,
    ) -> Result:
        """`sandbox run POLICY -- command` as the user, in the work directory."""
        n = next(_n)
        policy = Path(write_policy(self.dir, recipe.policy(self.dir, port), f"policy-{n}"))
        log = self.dir / f"audit-{n}.jsonl"
        self._own(policy)
        argv = [PY, "-m", "sandbox", "run", str(policy), "--audit-log", str(log)]
        argv += [*(["--trace-unveil"] if trace else []), "--", *command]
        if self.harness is not None:
            p = self.harness.run(argv, timeout=timeout)
        else:
            p = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=self.dir,
                env=self.env(),
                timeout=timeout,
            )
        return Result(p.returncode, p.stdout, p.stderr, asuser.read_log(log), str(log))

    def host(self, command: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """The same user, no sandbox (checks from the host)."""
        if self.harness is not None:
            return self.harness.run(command, **kw)
        return subprocess.run(
            command, capture_output=True, text=True, cwd=self.dir, env=self.env(), **kw
        )


WHO = ["root", asuser.TEST_USER]  # the users a `work` fixture runs as (its params)


def work_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Work]:
    """For a `work` fixture with params=WHO to `yield from`."""
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("the root half needs the suite to run as root")
        d = tmp_path / "work"
        d.mkdir()
        yield Work("root", d)
    else:
        h = asuser.as_user(tmp_path)
        yield Work(h.user.name, h.work, h)
    # Large files (sort's input, venvs) live in tmp_path: pytest's basetemp rotation and
    # this cleanup keep the shared disk clear.
    shutil.rmtree(tmp_path, ignore_errors=True)


def needs_program(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if shutil.which(n) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed here: {', '.join(missing)}")


# --- what a control must show ----------------------------------------------------------


def done(r: Result) -> Result:
    assert r.status == 0, r
    return r


def refused_naming_promise(r: Result, promise: str) -> dict[str, Any]:
    """Killed for a call that needs `promise`: the line says so and the record names it."""
    assert r.status == VIOLATION_EXIT, r
    line = next((x for x in r.stderr.splitlines() if "pledge violation" in x), "")
    assert re.search(rf"needs '([a-z_]+ )*{promise}( [a-z_]+)*'", line), r.stderr
    rec = r.violations[-1]
    assert promise in (rec["promise"] or "").split(), rec
    return rec


def refused_naming_path(r: Result, path: Path | str, fix: str) -> dict[str, Any]:
    """A path Landlock refused, named with its fix: the record and the line."""
    found = [d for d in r.of_kind("denied") if d.get("path") == str(path)]
    assert found, (r.of_kind("denied"), r.stderr)
    assert any(d["fix"] == fix for d in found), [d["fix"] for d in found]
    line = next(x for x in r.stderr.splitlines() if "unveil refused" in x and f" {path} (" in x)
    assert f": {fix} (as the parent read the call)" in line, line
    return found[0]


def refused_naming_port(r: Result, port: int) -> None:
    found = [d for d in r.of_kind("denied") if d.get("port") == port]
    assert found and found[0]["access"] == ["net.connect_tcp"], r.of_kind("denied")
    fix = f"add {port} to network.connect (with the promise 'inet')"
    assert found[0]["fix"] == fix, found
    assert f"Landlock refused connect (connect to TCP port {port}): {fix}" in r.stderr, r.stderr


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def mtime(p: Path) -> int:
    return int(p.lstat().st_mtime)
