"""Signals an agent sends itself: decided by the filter where the target is provably the
agent (pid 2 of its own pid namespace, and no 'proc': nothing can fork), by the parent
where it is not (a thread's tkill of its own thread id), refused for anything else.

raise(), abort(), pthread_kill and Go's preemption signal the caller itself; each used to
cost a round trip to the parent (45-67 us) and now costs what any allowed call costs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from progs.kit import PY, ROOT, Box, assert_killed, make_box, results, sandboxed

from sandbox.enforce.kernel import probe
from sandbox.enforce.plan import AGENT_PID_IN_NAMESPACE, compile_plan
from sandbox.enforce.rules import match
from sandbox.policy.narrow import narrow

SIGNALS = r"""
import ctypes, json, os, signal, threading
libc = ctypes.CDLL(None, use_errno=True)
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
out = {"pid": os.getpid()}
os.kill(os.getpid(), signal.SIGUSR1)                       # kill() of itself
signal.raise_signal(signal.SIGUSR1)                        # raise(): tgkill(own pid, own tid)
signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
def own_thread():                                          # tkill of its own thread id
    tid = threading.get_native_id()
    out["tkill"] = libc.syscall(200, tid, 0)               # SYS_tkill, signal 0
t = threading.Thread(target=own_thread); t.start(); t.join()
out["handled"] = len(got)
print("RESULT " + json.dumps(out), flush=True)
"""


def test_the_plan_lets_the_filter_decide_signals_to_the_agent_itself(tmp_path: Path) -> None:
    feats = probe()
    if not feats.namespaces:
        pytest.skip(f"no pid namespace for the agent here: {feats.namespaces_refused}")
    plan = compile_plan(narrow(None, "stdio thread", []), feats)
    assert plan.pidns
    me = AGENT_PID_IN_NAMESPACE
    # The filter's own rules (the ones it is compiled from): allowed outright, no parent.
    for call, args in (("kill", [me, 10]), ("tgkill", [me, me + 1, 10]), ("tkill", [me, 0])):
        rule = match(plan.rules, call, args)
        assert rule is not None and rule.action == "allow", (call, rule)
    # Another thread's id: the parent decides (it may be one of the agent's threads).
    rule = match(plan.rules, "tkill", [me + 1, 0])
    assert rule is not None and rule.handler == "self_signal", rule
    # Another process: no rule at all (a violation naming 'proc').
    assert match(plan.rules, "kill", [1, 9]) is None
    # With 'proc' the agent can fork: a pid fixed now could name a child; proc's own rows
    # allow kill outright anyway.
    with_proc = compile_plan(narrow(None, "stdio proc thread", []), feats)
    rule = match(with_proc.rules, "kill", [me + 5, 9])
    assert rule is not None and rule.action == "allow" and not rule.args, rule


def test_signals_to_itself_work_and_to_others_are_refused(tmp_path: Path) -> None:
    box: Box = make_box(tmp_path)
    direct = subprocess.run([PY, "-c", SIGNALS], capture_output=True, text=True, check=True)
    free = results(direct.stdout)
    assert free["handled"] == 3 and free["tkill"] == 0, direct
    r = sandboxed(box, [PY, "-c", SIGNALS], promises="stdio rpath thread")
    assert r.status == 0, r
    out = results(r.stdout)
    assert out["pid"] == AGENT_PID_IN_NAMESPACE, out
    assert out["handled"] == 3 and out["tkill"] == 0, out
    assert not r.violations, r.violations
    # A signal to another process (its parent: the reaper in the sandbox) needs 'proc';
    # the same call works without the sandbox (its parent is this test, which it owns).
    other = "import os; os.kill(os.getppid(), 0)"
    assert subprocess.run([PY, "-c", other]).returncode == 0
    r = sandboxed(box, [PY, "-c", other], promises="stdio rpath")
    assert_killed(r, "kill", "proc")


def test_lock_agent_filter_allows_its_own_pid(tmp_path: Path) -> None:
    box = make_box(tmp_path)
    agent = (
        "import sandbox\n"
        "from sandbox.policy import pathsets\n"
        "for name in ('@python', '@system'):\n"
        "    for p in pathsets.expand(name):\n"
        "        sandbox.unveil(p, 'rx')\n"
        "sandbox.pledge('stdio rpath thread')\n" + SIGNALS
    )
    policy = {"version": 1, "lock": "agent", "pledge": "stdio rpath thread"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = sandboxed(box, [PY, "-c", agent], promises=None, policy=policy, env=env)
    assert r.status == 0, r
    out = results(r.stdout)
    assert out["handled"] == 3 and out["tkill"] == 0 and not r.violations, r
    assert r.of_kind("lock"), r.records
