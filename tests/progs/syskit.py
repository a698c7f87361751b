"""Test kit for the agent system: a system of real agents under real policies, run by a
real `sandbox up` process, driven through the real CLI (sandbox ps/send/stop/down)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
BUS_AGENT = Path(__file__).with_name("bus_agent.py")
SANDBOX = [sys.executable, "-m", "sandbox"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}:{e.get('PATH', os.defpath)}"
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    return e


def policy(name: str, sends: Sequence[str] = (), violation: str = "kill") -> dict[str, Any]:
    """A bus_agent policy: lock: agent, pledge stdio plus TO:send for each of `sends`."""
    caps = [f"{to}:send" for to in sends]
    return {
        "version": 1,
        "name": name,
        "command": ["python3", str(BUS_AGENT), *caps],
        "lock": "agent",
        "init": {"timeout": "30s"},
        "pledge": " ".join(["stdio", *caps]),
        "resources": {to: {"type": "agent"} for to in sends},
        "violation": violation,
    }


class System:
    """A system file with bus agents in `root`; up() starts it, the rest drives it."""

    def __init__(
        self,
        root: Path,
        agents: Mapping[str, Mapping[str, Any]],
        supervision: Mapping[str, Any] | None = None,
        sends: Mapping[str, Sequence[str]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.file = root / "system.yaml"
        spec: dict[str, Any] = {"version": 1, "name": "test", "agents": {}}
        for name, fields in agents.items():
            pol = policy(name, (sends or {}).get(name, ()))
            (root / f"{name}.yaml").write_text(yaml.safe_dump(pol))
            spec["agents"][name] = {"policy": f"{name}.yaml", **fields}
        if supervision is not None:
            spec["supervision"] = dict(supervision)
        spec.update(extra or {})
        self.file.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.out = root / "up.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.root / "state"

    def up(self, wait: bool = True) -> None:
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [*SANDBOX, "up", str(self.file)], stdout=out, stderr=subprocess.STDOUT, env=env()
            )
        if wait:
            self.wait_for(lambda ps: all(a["state"] == "running" for a in ps))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SANDBOX, *args],
            capture_output=True,
            text=True,
            env=env(),
            timeout=timeout,
            check=False,
        )

    def ps(self) -> list[dict[str, Any]]:
        r = self.cli("ps", str(self.file), "--json")
        assert r.returncode == 0, (r, self.output())
        result: list[dict[str, Any]] = json.loads(r.stdout)
        return result

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {a["agent"]: a for a in self.ps()}

    def send(self, text: str, to: str | None = None, wait: bool = True) -> str:
        args = ["send", str(self.file), text]
        if to:
            args += ["--to", to]
        if wait:
            args += ["--wait", "--timeout", "60"]
        r = self.cli(*args, timeout=90)
        assert r.returncode == 0, (r, self.output())
        return r.stdout.strip()

    def send_async(self, text: str, to: str, timeout: float = 120) -> subprocess.Popen[str]:
        """`sandbox send --wait` in the background; its stdout is the reply's text."""
        args = ["send", str(self.file), "--to", to, "--wait", "--timeout", str(timeout), text]
        return subprocess.Popen([*SANDBOX, *args], stdout=subprocess.PIPE, text=True, env=env())

    def wait_for(self, ok: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ps until ok(ps) (a generous bound: never a timing assertion)."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"sandbox up exited {self.proc.returncode}:\n{self.output()}")
            r = self.cli("ps", str(self.file), "--json")
            if r.returncode == 0:
                last = json.loads(r.stdout)
                if ok(last):
                    return last
            time.sleep(0.1)
        raise AssertionError(f"condition not reached; last ps {last}\n{self.output()}")

    def down(self) -> int:
        r = self.cli("down", str(self.file))
        assert r.returncode == 0, (r, self.output())
        assert self.proc is not None
        return self.proc.wait(timeout=60)

    def kill_dispatcher(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def audit(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in records if kind is None or r["kind"] == kind]

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.state / "messages.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in records if kind is None or r["kind"] == kind]

    def starts(self) -> list[str]:
        """The agents in the order they were started (the audit log's start records)."""
        return [r["agent"] for r in self.audit("start")]

    def pid(self, agent: str) -> int:
        pid = self.by_name()[agent]["pid"]
        assert isinstance(pid, int)
        return pid


@pytest.fixture(name="systems")
def systems_fixture() -> Iterator[list[System]]:
    """Systems made by make(), stopped at the end of the test whatever happened."""
    made: list[System] = []
    yield made
    for s in made:
        s.stop()


def make(systems: list[System], root: Path, *args: Any, **kw: Any) -> System:
    s = System(root, *args, **kw)
    systems.append(s)
    return s
