"""From what a run did (sandbox.tools.observe) to the tightest policy that lets it happen.

Promises. Every recorded call must be decided as it was in the run by the promise table's
own evaluator (sandbox.enforce.rules.match over rules_for(promises)): a call that went
through must be allowed (or be a DNS query the parent performs), a call answered ENOSYS
must still get ENOSYS (or be allowed). The promises are chosen call by call, the cheapest
that decides it (promise_for's answer, or a single promise, by WEIGHT: the narrower of two
that would do), then each is dropped again if every call is still decided without it.
Calls of processes that exec'd decide `execpromises` the same way; `pledge` contains them.

Paths. Each access asks Landlock for letters on a path: r and w on a file opened, c on the
directory where something is created or removed, rx on a program and its interpreter.
- What the run created (and everything beneath it) did not exist before: its letters go
  to the nearest directory that did.
- A file that was removed or renamed over is a new inode afterwards, and Landlock rules
  hold on inodes: its letters go to its directory (which has c already).
- Each letter is then folded on its own: a directory gets the letter where the run gave it
  to most of its entries (more than half, at least two); `/` never.
- Each access's letters go to its closest entry (the closest decides, as in the parent's
  checks of what it performs, in -v and in lock: agent; Landlock's union is never less);
  an entry whose letters its enclosing entry has is dropped, and so are the files a
  promise brings (getpw: /etc/passwd, ...).

Nothing here runs anything: the result is data, rendered as YAML with a comment on each
line naming the first call that needed it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from sandbox.enforce.plan import effective_unveils
from sandbox.enforce.promises import PROMISE_NAMES, promise_for, rules_for
from sandbox.enforce.rules import Rule, match
from sandbox.policy.model import (
    PERM_LETTERS,
    Policy,
    Unveil,
    path_within,
    perm_string,
    unveil_beyond,
)
from sandbox.tools.observe import PERFORMED_HANDLERS, Access, Call, Observations

# What a promise grants, roughly: where two would decide a call, learn takes the lighter.
# Promises not listed (new rows of the table) weigh DEFAULT_WEIGHT; tmppath, which is
# rpath+wpath+cpath's calls on any path, is the last resort (as in promise_for).
WEIGHT: Mapping[str, int] = MappingProxyType(
    {
        "stdio": 0,
        "rpath": 1,
        "getpw": 1,
        "vminfo": 1,
        "unveil": 1,
        "wpath": 2,
        "flock": 2,
        "thread": 2,
        "tty": 2,
        "sendfd": 2,
        "recvfd": 2,
        "cpath": 3,
        "dpath": 3,
        "fattr": 3,
        "chown": 3,
        "ps": 3,
        "proc": 4,
        "exec": 4,
        "dns": 4,
        "unix": 5,
        "inet": 6,
        "prot_exec": 6,
        "mcast": 6,
        "jit": 7,
        "id": 8,
        "settime": 8,
        "tmppath": 9,
    }
)
DEFAULT_WEIGHT = 5


def weight(promise: str) -> int:
    return WEIGHT.get(promise, DEFAULT_WEIGHT)


def _cost(promises: Iterable[str]) -> int:
    return sum(weight(p) for p in promises)


@functools.lru_cache(maxsize=4096)
def _rules(promises: frozenset[str]) -> tuple[Rule, ...]:
    return tuple(rules_for(promises))


def decided(call: Call, promises: frozenset[str]) -> bool:
    """Would a policy with `promises` decide `call` as the learning run did?"""
    if call.needs_any and not call.needs_any & promises:
        return False
    rule = match(_rules(promises), call.name, call.args, self_pid=call.self_pid)
    if rule is None:
        return False
    if call.outcome == "enosys":
        return rule.action in ("enosys", "allow")
    if call.outcome == "unsupported":
        return rule.action == "notify" and rule.handler == "unsupported"
    if rule.action == "allow":
        return True
    if rule.action != "notify":
        return False
    return rule.handler in PERFORMED_HANDLERS or (rule.handler == "dns" and call.dns)


def solve(calls: Sequence[Call], forced: Iterable[str] = ()) -> frozenset[str]:
    """The fewest, lightest promises that decide every call (stdio always, `forced` kept)."""
    keep = frozenset({"stdio", *forced})
    chosen = set(keep)
    for call in calls:
        if decided(call, frozenset(chosen)):
            continue
        candidates = [{p} for p in sorted(PROMISE_NAMES - chosen)]
        hint = promise_for(call.name, call.args, self_pid=call.self_pid, have=chosen)
        if hint:
            candidates.append(set(hint.split()))
        good = [c for c in candidates if decided(call, frozenset(chosen | c))]
        if good:
            chosen |= min(good, key=lambda c: (_cost(c - chosen), sorted(c)))
    for p in sorted(chosen - keep, key=lambda p: (-weight(p), p)):
        trial = frozenset(chosen - {p})
        if all(decided(c, trial) for c in calls if decided(c, frozenset(chosen))):
            chosen = set(trial)
    return frozenset(chosen)


def needed_by(calls: Sequence[Call], promises: frozenset[str], p: str) -> Call | None:
    """The first call that `promises` decide and `promises` without `p` do not."""
    without = promises - {p}
    return next((c for c in calls if decided(c, promises) and not decided(c, without)), None)


# --- paths -----------------------------------------------------------------------------------

_PROC_PID = re.compile(r"^/proc/(?:[0-9]+|self|thread-self)(?:/|$)")


@dataclass(frozen=True)
class Entry:
    path: str  # absolute
    letters: str  # canonical order
    reason: str  # the first access that needed it


def _topmost_created(path: str, created: set[str]) -> str | None:
    top = None
    p = path
    while p != "/":
        if p in created:
            top = p
        p = os.path.dirname(p)
    return top


def _entries_count(directory: str) -> int | None:
    try:
        return len(os.listdir(directory))
    except OSError:
        return None


def _fold(paths: set[str]) -> set[str]:
    """Directories that hold the letter for most of their entries get it themselves."""
    paths = _minimal(paths)
    while True:
        by_parent: dict[str, set[str]] = defaultdict(set)
        for p in paths:
            if p != "/":
                by_parent[os.path.dirname(p)].add(p)
        for d, kids in sorted(by_parent.items(), key=lambda kv: (-kv[0].count("/"), kv[0])):
            if d == "/" or len(kids) < 2:
                continue
            n = _entries_count(d)
            if n is not None and 2 * len(kids) > n:
                paths = _minimal((paths - kids) | {d})
                break
        else:
            return paths


def _minimal(paths: set[str]) -> set[str]:
    """Without the paths that lie beneath another one of the set."""
    out: set[str] = set()
    for p in sorted(paths, key=lambda p: (p.count("/"), p)):
        if not any(path_within(p, q) for q in out):
            out.add(p)
    return out


def unveil_entries(obs: Observations, pledge: frozenset[str]) -> tuple[list[Entry], list[str]]:
    """The unveil of the learned policy, and the paths that no entry can express."""
    letters: dict[str, set[str]] = defaultdict(set)
    unexpressible: list[str] = []
    for a in obs.accesses:
        if _PROC_PID.match(a.path):
            # Landlock rules name the inodes a path reaches when the policy is loaded: a
            # /proc/PID path of the agent's own processes cannot be named in advance.
            if a.path not in unexpressible:
                unexpressible.append(a.path)
            continue
        path = a.path
        top = _topmost_created(path, obs.created)
        if top is not None:
            path = os.path.dirname(top)
        # A file removed or renamed over is another inode afterwards, and one that is gone
        # cannot be named: its directory holds its letters (it has 'c' for that already).
        while path != "/" and (path in obs.replaced or not os.path.lexists(path)):
            path = os.path.dirname(path)
        letters[path] |= set(a.letters)
    per_letter: dict[str, set[str]] = {}
    for letter in PERM_LETTERS:
        per_letter[letter] = _fold({p for p, ls in letters.items() if letter in ls})
    # Each path an entry; the closest entry of each access gets the access's letters: the
    # closest decides, as in the parent's checks of what it performs, -v and lock: agent
    # (Landlock grants the union of enclosing rules, which is never less).
    combined: dict[str, set[str]] = {p: set() for ps in per_letter.values() for p in ps}
    by_depth = sorted(combined, key=lambda p: -p.count("/"))
    for path, ls in letters.items():
        closest = next(e for e in by_depth if path_within(path, e))
        combined[closest] |= ls
    # An entry whose letters its closest enclosing entry has adds nothing: dropped (deepest
    # first, so what it decided goes to an entry that has them).
    for p in by_depth:
        above = next((e for e in by_depth if e != p and e in combined and path_within(p, e)), None)
        if above is not None and combined[p] <= combined[above]:
            del combined[p]
    implied = effective_unveils(Policy(name="learned", pledge=pledge))
    out: list[Entry] = []
    for p in sorted(combined):
        own = combined[p]
        if not own or unveil_beyond(p, own, implied) is None:
            continue
        out.append(Entry(p, perm_string(own), _reason(obs.accesses, p, own)))
    return out, unexpressible


def _reason(accesses: Sequence[Access], path: str, letters: Iterable[str]) -> str:
    """The first access of `path` itself that asked for one of `letters`, else the first
    beneath it."""
    wanted = set(letters)
    beneath = ""
    for a in accesses:
        if wanted & set(a.letters):
            if a.path == path:
                return a.text
            if not beneath and path_within(a.path, path):
                beneath = a.text
    return beneath


# --- the policy text --------------------------------------------------------------------------


@dataclass
class Proposal:
    name: str
    command: list[str]
    pledge: frozenset[str]
    execpromises: frozenset[str] | None
    unveil: list[Entry]
    connect: dict[int, str]
    bind: dict[int, str]
    limits: list[tuple[str, str, str, bool]]  # key, value, why, enforceable here
    env_keep: list[str] = field(default_factory=list)
    env_set: dict[str, str] = field(default_factory=dict)
    violation: str = "kill"
    header: list[str] = field(default_factory=list)
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # (section, item)
    templates: Mapping[str, str] = field(default_factory=dict)  # ${NAME} -> directory
    unexpressible: list[str] = field(default_factory=list)
    refused: list[Call] = field(default_factory=list)


def propose(obs: Observations) -> Proposal:
    """The promises, unveil and ports of the tightest policy for the run in `obs`."""
    agent_calls = [c for c in obs.calls if c.outcome != "eperm" and not c.execd]
    execd_calls = [c for c in obs.calls if c.outcome != "eperm" and c.execd]
    execpromises = solve(execd_calls) if obs.execd_any else None
    pledge = solve(agent_calls, execpromises or ())
    reasons: dict[tuple[str, str], str] = {}
    for p in sorted(pledge):
        call = needed_by(agent_calls, pledge, p)
        if call is not None:
            reasons[("pledge", p)] = f"{call.text} by {call.who}"
        elif execpromises is not None and p in execpromises:
            reasons[("pledge", p)] = "in execpromises (filters stack: pledge must contain it)"
    for p in sorted(execpromises or ()):
        call = needed_by(execd_calls, execpromises or frozenset(), p)
        if call is not None:
            reasons[("execpromises", p)] = f"{call.text} by {call.who}"
    reasons[("pledge", "stdio")] = reasons[("execpromises", "stdio")] = (
        "always: reading, writing and mapping memory (allowed unobserved while learning)"
    )
    entries, unexpressible = unveil_entries(obs, pledge)
    for e in entries:
        reasons[("unveil", e.path)] = e.reason
    connect = dict(sorted(obs.connect.items())) if "inet" in pledge else {}
    bind = dict(sorted(obs.bind.items())) if "inet" in pledge else {}
    for key, ports in (("connect", connect), ("bind", bind)):
        for port, why in ports.items():
            reasons[(key, str(port))] = why
    name = default_name(obs.command)
    return Proposal(
        name=name,
        command=list(obs.command),
        pledge=pledge,
        execpromises=execpromises,
        unveil=entries,
        connect=connect,
        bind=bind,
        limits=[],
        reasons=reasons,
        unexpressible=unexpressible,
        refused=list(obs.refused),
    )


def default_name(command: Sequence[str]) -> str:
    stem = os.path.basename(command[0]) if command else "learned"
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)
    return name or "learned"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's)."""
    return json.dumps(text, ensure_ascii=True)


def _comment(text: str, limit: int = 150) -> str:
    """One safe comment line: control characters escaped, cut at `limit`."""
    clean = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    if len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return f"  # {clean}" if clean else ""


def template(path: str, templates: Mapping[str, str]) -> str:
    """`path` with the longest matching parameter directory replaced by ${NAME}."""
    best = ""
    for name, base in templates.items():
        if base != "/" and path_within(path, base) and len(base) > len(templates.get(best, "")):
            best = name
    if not best:
        return path
    rest = path[len(templates[best]) :]
    return "${" + best + "}" + rest


def render(p: Proposal) -> str:
    """The policy as YAML, each line commented with the first call that needed it."""
    out = [f"# {line}" if line else "#" for line in p.header]
    out += ["version: 1", f"name: {p.name}"]
    if p.command:
        out.append("command: [" + ", ".join(_q(a) for a in p.command) + "]")
    out.append("pledge:")
    for promise in _ordered(p.pledge):
        out.append(f"  - {promise}" + _comment(p.reasons.get(("pledge", promise), "")))
    if p.execpromises is not None:
        out.append("execpromises:")
        for promise in _ordered(p.execpromises):
            out.append(f"  - {promise}" + _comment(p.reasons.get(("execpromises", promise), "")))
    if p.unveil:
        out.append("unveil:")
        for e in p.unveil:
            shown = template(e.path, p.templates)
            value = e.letters
            if not os.path.lexists(e.path):
                value = f"{{perms: {e.letters}, optional: true}}"
            out.append(
                f"  {_q(shown)}: {value}" + _comment(p.reasons.get(("unveil", e.path), e.reason))
            )
    else:
        out.append("unveil: {}  # the run opened no file")
    if "inet" in p.pledge:
        out.append("network:")
        for key, ports in (("connect", p.connect), ("bind", p.bind)):
            if not ports:
                out.append(f"  {key}: []  # no TCP {key} in the run")
                continue
            out.append(f"  {key}:")
            for port in ports:
                out.append(f"    - {port}" + _comment(p.reasons.get((key, str(port)), "")))
    if p.limits:
        out.append("limits:")
        for key, value, why, ok in p.limits:
            line = f"  {key}: {value}" + _comment(why)
            out.append(line if ok else "  # " + line.strip() + " [not enforceable here]")
    if p.env_keep or p.env_set:
        keep = ["PATH", "LANG", "TERM", "HOME", "TZ", *p.env_keep]
        out.append("env:")
        out.append("  keep: [" + ", ".join(dict.fromkeys(keep)) + "]")
        if p.env_set:
            out.append("  set: {" + ", ".join(f"{k}: {_q(v)}" for k, v in p.env_set.items()) + "}")
    out.append(f"violation: {p.violation}")
    return "\n".join(out) + "\n"


def _ordered(promises: Iterable[str]) -> list[str]:
    from sandbox.enforce.promises import PROMISES

    order = list(PROMISES)
    return sorted(promises, key=lambda x: order.index(x) if x in order else len(order))


def unveil_policy(entries: Sequence[Entry]) -> tuple[Unveil, ...]:
    return tuple(Unveil(e.path, frozenset(e.letters), not os.path.lexists(e.path)) for e in entries)
