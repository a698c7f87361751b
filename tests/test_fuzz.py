"""Seeded, bounded fuzzing of every parser that reads what others wrote: the policy loader,
the audit-log readers (verify, show, the writer's tail), the broker's frames and the lock
gate's declarations.

Each target gets a few thousand cases generated from one fixed seed (the same cases on
every run, so a failure reproduces; set SANDBOX_FUZZ_SEED to explore others), built from
valid input and mutated: random edits, hostile values (huge numbers, long runs of
whitespace, deep nesting, odd Unicode, lone surrogates). What must hold for every case: a
clean result or the parser's own error, with a location where the format has one; never
any other exception; and little CPU time per case. CPU time of this process is measured
(time.process_time), not wall time, so a busy machine does not make the bound flaky; the
bound (a second) is far above what a case takes (milliseconds) and the slowest case is
printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import string
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import wire
from sandbox.errors import PolicyError
from sandbox.parent.audit import AuditError, AuditLog, format_show, verify
from sandbox.parent.lockgate import Declaration, Refused, declaration
from sandbox.policy.loader import load_policy_text
from sandbox.policy.model import Policy, Unveil

SEED = int(os.environ.get("SANDBOX_FUZZ_SEED", "20260801"))
CPU_BOUND = 1.0  # seconds of CPU for one case; the slowest is printed


class Clock:
    """The CPU time of each case; the slowest is reported."""

    def __init__(self, name: str) -> None:
        self.name, self.worst, self.worst_case = name, 0.0, ""

    def run(self, case: str, fn: Callable[[], None]) -> None:
        start = time.process_time()
        fn()
        spent = time.process_time() - start
        if spent > self.worst:
            self.worst, self.worst_case = spent, case[:120]
        assert spent < CPU_BOUND, f"{self.name}: {spent:.2f} s of CPU for {case[:200]!r}"

    def report(self, cases: int) -> None:
        print(
            f"\n{self.name}: {cases} cases, slowest {self.worst * 1000:.1f} ms: {self.worst_case!r}"
        )


# ============================================================================ generators

HOSTILE_TEXT = [
    "",
    " " * 60_000,
    "\t\t\t",
    "9" * 5000,
    "-" + "9" * 30,
    "1e999999",
    "0x1F",
    "1_000",
    "²",
    "½",
    "٣",  # an Arabic-Indic digit: isdigit() is true
    "\u2028",
    "\u202e",
    "\x00",
    "\ud800",
    "\udcff",
    "é" * 3000,
    "..",
    "../../etc/passwd",
    "/",
    "~",
    "&a",
    "*a",
    "!!python/object:os.system",
    "[" * 200,
    "{" * 200,
    "1" + " " * 50_000 + "x!",
    "1d" * 50_000,
    "512MiB",
    "10s",
    "null",
    "yes",
    "NaN",
    ".inf",
]
PROMISE_WORDS = [
    "stdio",
    "rpath",
    "wpath",
    "cpath",
    "inet",
    "dns",
    "exec",
    "proc",
    "mcast",
    "jit",
    "vault:read",
    "vault:write",
    "fly",
]


def _scalar(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(HOSTILE_TEXT)
    if roll < 0.6:
        return " ".join(rng.choice(PROMISE_WORDS) for _ in range(rng.randint(0, 4)))
    if roll < 0.8:
        return str(rng.choice([0, 1, -1, 443, 65535, 65536, 2**31, 2**63, 2**64]))
    return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))


def _quoted(rng: random.Random, value: str) -> str:
    style = rng.random()
    if style < 0.4:
        return json.dumps(value)  # JSON is YAML: escapes included (\ud800 in text)
    if style < 0.7:
        return value
    return "'" + value.replace("'", "''") + "'"


def _base_policy(rng: random.Random, data: Path) -> list[str]:
    lines = ["version: 1", f"name: {rng.choice(['agent', 'a-b', 'Bad_Name', ''])}"]
    pool = [
        f"pledge: {_quoted(rng, _scalar(rng))}",
        f"pledge: [{', '.join(_quoted(rng, w) for w in rng.sample(PROMISE_WORDS, 3))}]",
        f"execpromises: {_quoted(rng, _scalar(rng))}",
        f"lock: {rng.choice(['exec', 'agent', 'later'])}",
        f"init: {{timeout: {_quoted(rng, _scalar(rng))}, pledge: {_quoted(rng, _scalar(rng))}}}",
        f"unveil: {{{json.dumps(str(data))}: {_quoted(rng, rng.choice(['r', 'rwxc', 'z', '']))}}}",
        f"unveil:\n  {_quoted(rng, _scalar(rng))}: {_quoted(rng, _scalar(rng))}",
        f"network: {{connect: [{_scalar(rng)}], bind: [{_quoted(rng, _scalar(rng))}]}}",
        "resources:\n  vault: {type: dir, path: " + json.dumps(str(data)) + "}",
        "resources:\n  llm: {type: http, url: "
        + _quoted(
            rng, rng.choice(["https://api.example.com/v1/", "ftp://x", "http://[::1", _scalar(rng)])
        )
        + ", timeout: "
        + _quoted(rng, _scalar(rng))
        + "}",
        f"limits: {{memory: {_quoted(rng, _scalar(rng))}, cpu: {_quoted(rng, _scalar(rng))}, "
        f"wall: {_quoted(rng, _scalar(rng))}, files: {_scalar(rng)}}}",
        f"limits: {{file_size: {_quoted(rng, _scalar(rng))}, processes: {_scalar(rng)}}}",
        f"env: {{keep: [{_quoted(rng, _scalar(rng))}], set: {{A: {_quoted(rng, _scalar(rng))}}}}}",
        f"violation: {_quoted(rng, rng.choice(['kill', 'errno', 'log', _scalar(rng)]))}",
        f"qos: {_quoted(rng, rng.choice(['utility', 'background', _scalar(rng)]))}",
        f"best_effort: {rng.choice(['true', 'false', 'maybe', _scalar(rng)])}",
        f"user: {_quoted(rng, rng.choice(['root', 'nobody', '0', '²', _scalar(rng)]))}",
        f"command: {_quoted(rng, _scalar(rng))}",
        f"{_scalar(rng)}: {_quoted(rng, _scalar(rng))}",
    ]
    lines += rng.sample(pool, rng.randint(1, 7))
    return lines


def _mutate_text(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(0, 4)):
        if not text:
            break
        i = rng.randrange(len(text))
        op = rng.random()
        if op < 0.25:
            text = text[:i] + text[i + 1 :]
        elif op < 0.5:
            text = text[:i] + rng.choice(string.printable + "\u00e9\u2028\ufeff") + text[i:]
        elif op < 0.7:
            text = text[:i] + rng.choice(HOSTILE_TEXT[:8]) + text[i:]
        elif op < 0.85:
            j = rng.randrange(len(text))
            text = text[: min(i, j)] + text[max(i, j) :]
        else:
            text = text[:i] + text[i : i + 200] * rng.randint(2, 5) + text[i + 200 :]
    return text


def policies(rng: random.Random, data: Path, n: int) -> Iterator[str]:
    for _ in range(n):
        lines = _base_policy(rng, data)
        if rng.random() < 0.3:
            rng.shuffle(lines)
        if rng.random() < 0.1:
            lines.append("x: " + "[" * rng.randint(10, 5000))
        yield _mutate_text(rng, "\n".join(lines) + "\n")


# ============================================================================ policy loader


def test_fuzz_policy_loader(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    data.mkdir()
    path = str(tmp_path / "fuzz.yaml")
    clock = Clock("policy loader")
    outcomes = {"policy": 0, "errors": 0}
    cases = 2500

    def one(text: str) -> None:
        try:
            result = load_policy_text(text, path, str(tmp_path))
        except PolicyError as e:
            assert e.problems, text
            for p in e.problems:
                assert p.file == path and p.line >= 1 and p.column >= 1, (p, text[:200])
                assert isinstance(p.message, str) and p.message, (p, text[:200])
                assert len(p.message) < 2000, p.message[:300]  # quoted, never repeated
            outcomes["errors"] += 1
            return
        assert isinstance(result, Policy)
        outcomes["policy"] += 1

    for text in policies(rng, data, cases):
        clock.run(text, lambda text=text: one(text))  # type: ignore[misc]
    clock.report(cases)
    assert outcomes["errors"] > cases // 2 and outcomes["policy"] > 0, outcomes


def test_fuzz_policy_cli_never_gives_a_traceback(tmp_path: Path) -> None:
    """A few of the same cases through `sandbox check` itself: exit 0 or 2, never more."""
    import resource
    import subprocess
    import sys

    rng = random.Random(SEED + 1)
    data = tmp_path / "data"
    data.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for i, text in enumerate(policies(rng, data, 12)):
        path = tmp_path / f"p{i}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(
            [sys.executable, "-m", "sandbox", "check", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        assert p.returncode in (0, 2), (p.returncode, p.stderr[-2000:], text[:300])
        assert "Traceback" not in p.stderr, p.stderr[-2000:]
        if p.returncode == 2:
            assert p.stderr.startswith(f"{path}:"), p.stderr[:300]
        assert cpu < 10, f"{cpu:.1f} s of CPU for `sandbox check` of {text[:200]!r}"


# ============================================================================ audit-log readers


def _valid_log(path: Path) -> None:
    with AuditLog(path, "fuzz") as log:
        log.record(
            "start",
            pid=1,
            policy="/p.yaml",
            policy_sha256="0" * 64,
            command=["x"],
            enforced={"seccomp": {"promises": ["stdio"]}, "not_enforced": []},
        )
        log.record("lock", pid=1, pledge="stdio", unveil={"/usr": "rx"})
        log.record(
            "violation", pid=1, syscall="mkdir", args='"/x", 0777', promise="cpath", action="errno"
        )
        log.record(
            "op",
            pid=1,
            op="open",
            resource="vault",
            path="a\udcff",
            decision="allow",
            reason="vault:read promised",
        )
        log.record("suppressed", pid=1, count=9, window=5.0, counts={"violation mkdir": 9})
        log.record("error", pid=1, where="broker open", error="ValueError: x")
        log.record("exit", pid=1, status=0)


def _mutate_log(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        i = rng.randrange(len(lines))
        if op < 0.2:
            b = bytearray(lines[i]) or bytearray(b"x")
            b[rng.randrange(len(b))] = rng.randrange(256)
            lines[i] = bytes(b)
        elif op < 0.3:
            depth = rng.choice([20, 1000, 30_000, 100_000])
            lines.insert(i, b"[" * depth + b"]" * depth)
        elif op < 0.4:
            lines.insert(i, b'{"seq": 1, "x": ' + b'{"a": ' * rng.randint(10, 40_000) + b"1}")
        elif op < 0.5:
            lines.insert(i, b"x" * rng.choice([70_000, 200_000]))
        elif op < 0.6:
            lines.insert(
                i,
                rng.choice(
                    [
                        b'{"seq": 1e999999}',
                        b'{"seq": ' + b"9" * 5000 + b"}",
                        b'{"seq": NaN}',
                        b'"\\ud800"',
                        b"\xff\xfe",
                        b"[]",
                        b'{"seq": 2, "seq": 3}',
                        b"\\",
                        b"",
                    ]
                ),
            )
        elif op < 0.7:
            del lines[i]
        elif op < 0.8:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op < 0.9:
            cut = rng.randrange(len(data) + 1)
            return data[:cut]
        else:
            lines[i] = lines[i].replace(b'"kind":"', b'"kind":"x') if lines[i] else b"{"
    return b"\n".join(lines)


def test_fuzz_audit_log_readers(tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    base = tmp_path / "base.jsonl"
    _valid_log(base)
    good = base.read_bytes()
    clock = Clock("audit-log readers")
    cases = 1500
    seen = {"ok": 0, "bad": 0}

    def one(path: Path) -> None:
        result = verify(path)  # never raises
        seen["ok" if result.ok else "bad"] += 1
        if not result.ok and result.first_bad_line is not None:
            assert result.first_bad_line >= 1 and result.message.startswith(
                f"line {result.first_bad_line}: "
            ), result
        try:
            text = format_show(path)
            assert isinstance(text, str)
        except AuditError as e:
            assert str(e).startswith(f"{path}:") and str(e).split(":")[1].isdigit(), str(e)
        try:
            log = AuditLog(path, "fuzz")  # the writer reads the tail to continue the chain
        except AuditError as e:
            assert str(path) in str(e), str(e)
        else:
            with contextlib.suppress(AuditError):
                log.record("exit", pid=2, status=0)
            log.close()

    for i in range(cases):
        path = tmp_path / f"log{i % 50}.jsonl"
        data = _mutate_log(rng, good)
        path.write_bytes(data)
        clock.run(repr(data[:120]), lambda path=path: one(path))  # type: ignore[misc]
    clock.report(cases)
    assert seen["bad"] > cases // 2 and seen["ok"] > 0, seen


# ============================================================================ broker frames


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice([None, True, 0, -1, 2**63, 2**64, 1.5, "", "x", "\ud800", "é", "\0"])
    if roll < 0.6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(["id", "op", "path", "\ud800", "x"]): _json_value(rng, depth + 1)
        for _ in range(rng.randint(0, 4))
    }


def frames(rng: random.Random, n: int) -> Iterator[bytes]:
    valid = [
        b'{"id":1,"op":"open","resource":"vault","path":"a.txt","mode":"r"}',
        b'{"id":2,"op":"lock","pledge":"stdio","unveil":{"/usr":"rx"}}',
        b'{"id":3,"ok":true}',
    ]
    for _ in range(n):
        roll = rng.random()
        if roll < 0.3:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data)
        elif roll < 0.5:
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        elif roll < 0.6:
            depth = rng.choice([100, 5000, 30_000])
            yield b'{"id":1,"op":"x","a":' + b"[" * depth + b"]" * depth + b"}"
        elif roll < 0.7:
            yield (
                b'{"id":'
                + rng.choice([b"1e400", b"-1", b"9" * 5000, b"true", b"1.0"])
                + b',"op":"x"}'
            )
        elif roll < 0.8:
            yield b"x" * rng.choice([wire.MAX_FRAME, wire.MAX_FRAME + 1, 2 * wire.MAX_FRAME])
        else:
            obj = {"id": rng.randint(-2, 2**64), "op": _json_value(rng), **{"f": _json_value(rng)}}
            try:
                yield wire.encode(obj)
            except wire.WireError:
                yield json.dumps(obj).encode()


def test_fuzz_wire_decode() -> None:
    rng = random.Random(SEED + 3)
    clock = Clock("wire.decode")
    cases = 4000
    kinds = {"request": 0, "refused": 0}

    def one(data: bytes) -> None:
        for reply in (False, True):
            try:
                msg = wire.decode(data, reply=reply)
            except wire.WireError:
                kinds["refused"] += 1
                continue
            assert isinstance(msg, dict) and isinstance(msg["id"], int)
            assert 0 <= msg["id"] < 2**63
            if reply:
                assert isinstance(msg["ok"], bool)
            else:
                assert isinstance(msg["op"], str) and msg["op"]
                # whatever the agent sent can be answered: the reply is always encodable
                wire.encode({"id": msg["id"], "ok": False, "message": repr(msg)[:1000]})
                wire.encode({"id": msg["id"], "ok": False, "message": str(msg.get("op"))[:1000]})
            kinds["request"] += 1

    for data in frames(rng, cases):
        clock.run(repr(data[:120]), lambda data=data: one(data))  # type: ignore[misc]
    clock.report(cases)
    assert kinds["refused"] > cases and kinds["request"] > 0, kinds


# ============================================================================ lock gate


def _declaration_value(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.4:
        words = [*PROMISE_WORDS, "\ud800", "", "stdio" * 900]
        return " ".join(rng.choice(words) for _ in range(3))
    if roll < 0.6:
        return {
            rng.choice(
                [
                    "/usr",
                    "/usr/../etc",
                    "/\ud800",
                    "relative",
                    "/a\0b",
                    "/" + "x" * 5000,
                    "/usr/" + "é" * 3,
                    "/proc/self/root",
                    "",
                ]
            ): rng.choice(["r", "rx", "rwxc", "z", "", "\ud800", 7])
            for _ in range(rng.randint(0, 6))
        }
    return _json_value(rng)


def test_fuzz_lock_gate_declarations(tmp_path: Path) -> None:
    rng = random.Random(SEED + 4)
    policy = Policy(
        name="gate",
        lock="agent",
        pledge=frozenset({"stdio", "rpath", "exec"}),
        execpromises=frozenset({"stdio"}),
        unveil=(Unveil("/usr", frozenset("rx")),),
    )
    clock = Clock("lock gate")
    cases = 2500
    seen = {"accepted": 0, "refused": 0}

    def one(request: dict[str, Any]) -> None:
        try:
            decl = declaration(policy, request, current=policy if rng.random() < 0.5 else None)
        except Refused as e:
            assert str(e)
            seen["refused"] += 1
            return
        assert isinstance(decl, Declaration) and decl.pledge <= policy.pledge
        seen["accepted"] += 1

    for _ in range(cases):
        request: dict[str, Any] = {"id": 1, "op": "lock"}
        for key in ("pledge", "execpromises", "unveil"):
            if rng.random() < 0.8:
                request[key] = _declaration_value(rng)
        if rng.random() < 0.2:
            request.update(pledge="stdio", unveil={"/usr": "r"})
        clock.run(repr(request)[:200], lambda request=request: one(request))  # type: ignore[misc]
    clock.report(cases)
    assert seen["refused"] > cases // 2 and seen["accepted"] > 0, seen


@pytest.mark.parametrize("text", ["version: 1\nname: x\ud800\n", "\ud800"])
def test_policy_text_with_a_lone_surrogate_is_a_located_error(text: str, tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "t.yaml", str(tmp_path))
    (problem,) = info.value.problems
    assert problem.line >= 1 and "not valid Unicode" in problem.message
