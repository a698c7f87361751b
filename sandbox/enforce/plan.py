"""Policy -> Plan: what the kernel will be told, as data, computed without touching it.

The plan is what `explain` prints, what the start record calls `enforced`, and the only
input of the code that applies mechanisms (sandbox.enforce.apply).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.enforce import landlock, mounts
from sandbox.enforce import syscalls as S
from sandbox.enforce.kernel import Features
from sandbox.enforce.promises import (
    BRINGS_FILES,
    BRINGS_STAT,
    IMPLIED_UNVEILS,
    OWN_ID_CALLS,
    rules_for,
)
from sandbox.enforce.rules import SELF_PID, Arg, Rule
from sandbox.errors import SetupError
from sandbox.plain import field, plain, replace
from sandbox.policy.model import Policy, Unveil
from sandbox.protocol import (
    BROKER_FD,
    ENV_AGENT,
    ENV_BROKER_FD,
    ENV_LANDLOCK_FLAGS,
    ENV_LOCK,
    ENV_VIOLATION,
)

# Every exec reaches the parent: the first is the launcher's own exec of the command (the
# lock moment), later ones need 'exec' and move the process under its execpromises.
EXEC_RULES = (
    Rule("execve", action="notify", handler="exec"),
    Rule("execveat", action="notify", handler="exec"),
)
EXEC_SYSCALLS = frozenset(r.syscall for r in EXEC_RULES)

RLIMIT_OF = {
    "cpu": resource.RLIMIT_CPU,
    "files": resource.RLIMIT_NOFILE,
    "file_size": resource.RLIMIT_FSIZE,
}


@plain(frozen=True)
class Requirement:
    """A mechanism the policy needs; `missing` says why it cannot be had here (None: fine)."""

    name: str
    why: str
    missing: str | None


@plain(frozen=True)
class Plan:
    policy: Policy
    rules: tuple[Rule, ...]
    landlock: landlock.LandlockPlan | None
    unveils: tuple[Unveil, ...]
    noexec: tuple[str, ...]
    rlimits: tuple[tuple[int, int], ...]
    cgroup_memory: int | None
    cgroup_processes: int | None
    env: Mapping[str, str]
    requirements: tuple[Requirement, ...]
    user_notif: bool = True
    degraded: tuple[str, ...] = field(default=())
    dns_relay: bool = False  # 'dns' without 'inet': own network namespace, parent relays DNS
    pidns: bool = False  # the reaper is pid 1 of the agent's own pid namespace
    userns: bool = False  # an ordinary user's launch: the namespaces live in a user namespace
    landlock_audit: bool = False  # the parent reads Landlock's refusals from audit records
    capabilities: str = "all dropped"
    trace_unveil: bool = False  # path-taking calls go to the parent, which names refusals
    # 'unix' on a kernel without Landlock's resolve_unix: the parent decides connect/sendto/
    # sendmsg (sandbox.parent.perform); own_netns: the agent has a network namespace of its
    # own, so the abstract sockets there are all the sandbox's.
    parent_unix: bool = False
    own_netns: bool = False
    resolve_unix: bool = True  # the kernel's Landlock confines pathname unix sockets
    # Files the pledged promises bring (BRINGS_FILES): (real path, letters, promise); no
    # letters: the metadata of that very path only (BRINGS_STAT).
    brought: tuple[tuple[str, str, str], ...] = ()

    @property
    def missing(self) -> list[Requirement]:
        return [r for r in self.requirements if r.missing]

    def enforced(self) -> dict[str, Any]:
        """What the kernel enforces for this run (the start record's `enforced`)."""
        ll = self.landlock
        return {
            "seccomp": {"promises": sorted(self.policy.pledge), "listener": self.user_notif},
            "landlock": None
            if ll is None
            else {
                "abi": ll.abi,
                "fs": True,
                "tcp": bool(ll.handled_net),
                "scopes": landlock_scope_names(ll.scopes),
            },
            "noexec_writable_paths": list(self.noexec),
            "dns": "relayed by the parent, own network namespace" if self.dns_relay else None,
            "unix": None
            if "unix" not in self.policy.pledge
            else (
                "connect/sendto/sendmsg decided and performed by the parent"
                + (
                    "; abstract sockets: the agent's own network namespace"
                    if self.own_netns
                    else "; abstract sockets refused (shared network namespace)"
                )
                if self.parent_unix
                else "Landlock resolve_unix"
            ),
            "cgroup": {"memory": self.cgroup_memory, "processes": self.cgroup_processes}
            if self.cgroup_memory is not None or self.cgroup_processes is not None
            else None,
            "rlimits": {str(r): v for r, v in self.rlimits},
            "qos": self.policy.qos,
            "no_new_privs": True,
            "capabilities": self.capabilities,
            "pid_namespace": self.pidns,
            "user_namespace": "own uid and gid mapped onto themselves" if self.userns else None,
            "landlock_refusals": "reported from audit records"
            if self.landlock_audit
            else "read by the parent (--trace-unveil)"
            if self.trace_unveil
            else "not reported (no audit records)",
            "not_enforced": list(self.degraded),
        }


def landlock_scope_names(scopes: int) -> list[str]:
    names = {
        landlock.SCOPE_ABSTRACT_UNIX_SOCKET: "abstract_unix_socket",
        landlock.SCOPE_SIGNAL: "signal",
    }
    return [n for bit, n in names.items() if scopes & bit]


def effective_unveils(policy: Policy, *, brought: bool = True) -> tuple[Unveil, ...]:
    """The policy's unveils plus the read-only files some promises imply (dns, getpw...).

    brought=False leaves out the files a promise brings (BRINGS_FILES): they are there to
    be read (or written, /dev/null), not to have their modes, owners or times changed.
    """
    out = list(policy.unveil)
    have = {u.path for u in out}
    for promise in sorted(policy.pledge if brought else policy.pledge - BRINGS_FILES):
        for path, perms in IMPLIED_UNVEILS.get(promise, ()):
            if path not in have:
                out.append(Unveil(path=path, perms=frozenset(perms), optional=True))
                have.add(path)
    return tuple(out)


def brought_files(pledge: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    """The files the pledged promises bring (real paths, as Landlock and the agent reach
    them), for the parent to open for an agent that lacks rpath."""
    out: dict[str, tuple[str, str, str]] = {}
    for promise in sorted(set(pledge) & BRINGS_FILES):
        for path, perms in IMPLIED_UNVEILS.get(promise, ()):
            if os.path.exists(path):
                real = os.path.realpath(path)
                out.setdefault(real, (real, perms, promise))
                # A symlink (/etc/localtime) is opened by its name and resolved to its target.
                out.setdefault(path, (path, perms, promise))
        for path in BRINGS_STAT.get(promise, ()):
            out.setdefault(path, (path, "", promise))  # no letters: stat of that path only
    return tuple(out.values())


# Calls whose destination address lies behind a pointer (sendmsg's msghdr) or whose
# socket's family the filter cannot see: with 'unix' and no Landlock resolve_unix they are
# all decided by the parent (handler "unix"), which reads the address once and performs the
# call itself. The broker channel (fd 3) is a connected SEQPACKET socket, which ignores any
# address: it stays direct, as sendto without an address does.
_UNIX_DECIDED = ("connect", "sendto", "sendmsg", "sendmmsg")
# Fast Open sends stay refused as the table refuses them (handler "unsupported"): the rows
# the parent decides exclude MSG_FASTOPEN, so the two never overlap.
_NO_FASTOPEN = {"sendto": 3, "sendmsg": 2, "sendmmsg": 3}


def _no_fastopen(name: str) -> Arg:
    return Arg(_NO_FASTOPEN[name], "masked_eq", 0, S.MSG_FASTOPEN)


_UNIX_BY_PARENT = {
    "connect": Rule("connect", action="notify", handler="unix"),
    "sendto": Rule(
        "sendto", (_no_fastopen("sendto"), Arg(4, "ne", 0)), action="notify", handler="unix"
    ),
    "sendmsg": Rule(
        "sendmsg",
        (Arg(0, "ne", BROKER_FD), _no_fastopen("sendmsg")),
        action="notify",
        handler="unix",
    ),
    "sendmmsg": Rule("sendmmsg", (_no_fastopen("sendmmsg"),), action="notify", handler="unix"),
}


def _kept_direct(rule: Rule) -> bool:
    """What stays as the table has it when the parent decides connects and sends: the
    refusals of Fast Open, and the sends that carry no address (sendto without one; sendmsg
    on the broker channel, a connected SEQPACKET socket that ignores any address). Other
    rows of those calls (stdio's sendmsg on any socket, dns's nameserver connects) give way
    to the parent, which decides dns's nameservers too."""
    if rule.handler == "unsupported":
        return True
    if rule.action != "allow":
        return False
    if rule.syscall == "sendto":
        return Arg(4, "eq", 0) in rule.args
    if rule.syscall == "sendmsg":
        return Arg(0, "eq", BROKER_FD) in rule.args
    return False


# Without resolve_unix a datagram socket reaches any pathname socket with sendmsg (the
# address is in the msghdr), even one of a socketpair: stdio keeps stream and seqpacket
# pairs, datagram pairs need 'unix' (then the parent decides their sendmsg).
_UNIX_SOCKETPAIR = Rule("socketpair", (Arg(0, "eq", S.AF_UNIX),))
_STREAM_SOCKETPAIRS = tuple(
    Rule("socketpair", (Arg(0, "eq", S.AF_UNIX), Arg(1, "masked_eq", t, S.SOCK_TYPE_MASK)))
    for t in (S.SOCK_STREAM, S.SOCK_SEQPACKET)
)


def _unix_without_landlock(rules: list[Rule], unix: bool) -> list[Rule]:
    """The rule list for a kernel without Landlock's resolve_unix (ABI < 9)."""
    if not unix:
        return [
            r2 for r in rules for r2 in (_STREAM_SOCKETPAIRS if r == _UNIX_SOCKETPAIR else (r,))
        ]
    present = {r.syscall for r in rules if r.syscall in _UNIX_DECIDED}
    out = [r for r in rules if r.syscall not in _UNIX_DECIDED or _kept_direct(r)]
    out += [_UNIX_BY_PARENT[name] for name in _UNIX_DECIDED if name in present]
    if any(r.syscall == "socketpair" for r in out) and _UNIX_SOCKETPAIR not in out:
        out.append(_UNIX_SOCKETPAIR)
    return out


def path_rules(unveils: Iterable[Unveil]) -> tuple[landlock.PathRule, ...]:
    """Landlock's path rules for `unveils` (optional ones that do not exist are left out)."""
    return tuple(
        landlock.PathRule(u.path, landlock.rights_for(u.perms))
        for u in unveils
        if not (u.optional and not os.path.exists(u.path))
    )


# The agent's pid as it sees itself, where the launcher knows it before the filter exists:
# the first child of the reaper, pid 1 of the agent's own pid namespace.
AGENT_PID_IN_NAMESPACE = 2


def _self_signal(rule: Rule, self_pid: int | None, can_fork: bool) -> tuple[Rule, ...]:
    """A signal to the agent itself (the table's SELF_PID rows: kill, tkill, tgkill,
    rt_(tg)sigqueueinfo of the caller's own pid).

    Where the agent's pid is known when the filter is built (`self_pid`) and nothing can
    fork (no 'proc'), the pid can only ever name the agent itself: the filter allows it,
    with no round trip (raise(), abort(), pthread_kill, Go's preemption signals). Otherwise
    the parent decides: it knows the caller's pid, and the caller, blocked in the call,
    cannot change it; the filter then names no pid and can be built before the fork.
    tkill names a thread, and the agent's other threads have other ids: the parent still
    decides those."""
    if not any(a.value == SELF_PID for a in rule.args):
        return (rule,)
    parent = Rule(rule.syscall, action="notify", handler="self_signal")
    if self_pid is None or can_fork:
        return (parent,)
    args = tuple(replace(a, value=self_pid) if a.value == SELF_PID else a for a in rule.args)
    direct = replace(rule, args=args)
    if rule.syscall != "tkill":
        return (direct,)
    return direct, replace(parent, args=(Arg(0, "ne", self_pid),))


def seccomp_rules(
    pledge: Iterable[str],
    execpromises: Iterable[str] | None,
    *,
    resolve_unix: bool = True,
    self_pid: int | None = None,
) -> tuple[Rule, ...]:
    """The launched filter's rules: the pledge, exec routed to the parent, and under
    execpromises every rule the pledge has beyond them routed to the parent too (it knows
    which processes have exec'd; the filter cannot). Without `resolve_unix` (Landlock ABI
    < 9) the unix socket calls go to the parent as well. `self_pid`: the agent's own pid
    where it is known in advance (see _self_signal)."""
    pledge = set(pledge)
    can_fork = "proc" in pledge

    def rules(promises: set[str]) -> list[Rule]:
        out = rules_for(promises)
        out = out if resolve_unix else _unix_without_landlock(out, "unix" in promises)
        return [s for r in out for s in _self_signal(r, self_pid, can_fork)]

    base = [r for r in rules(pledge) if r.syscall not in EXEC_SYSCALLS]
    if "id" not in pledge:
        # The ids it already has: the parent answers (see promises.OWN_ID_CALLS).
        base += [Rule(n, action="notify", handler="own_ids") for n in OWN_ID_CALLS]
    if execpromises is not None:
        narrow = set(rules(set(execpromises) & pledge))
        base = [
            r
            if r in narrow or r.action != "allow"
            else replace(r, action="notify", handler="execpromises")
            for r in base
        ]
    return (*base, *EXEC_RULES)


def trace_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """--trace-unveil: every path-taking call the pledge allows goes to the parent, which
    only reads it to name what Landlock will refuse (sandbox.parent.denials)."""
    from sandbox.parent.denials import TRACED, TRACED_NET

    rules = list(rules)
    calls = {*TRACED, *TRACED_NET}  # paths, and TCP ports (connect, bind)
    traced = [
        replace(r, action="notify", handler="trace")
        for r in rules
        if r.syscall in calls and r.action == "allow"
    ]
    rest = [r for r in rules if not (r.syscall in calls and r.action == "allow")]
    # First: where a call also matches another notify rule (execpromises), the traced one
    # decides, as the allow rule it replaces would have (match() takes the first of equals).
    return (*traced, *rest)


def compile_plan(
    policy: Policy,
    feats: Features,
    environ: Mapping[str, str] | None = None,
    *,
    trace_unveil: bool = False,
) -> Plan:
    environ = os.environ if environ is None else environ
    reqs: list[Requirement] = []
    degraded: list[str] = []

    def need(name: str, why: str, missing: str | None) -> bool:
        reqs.append(Requirement(name, why, missing))
        if missing:
            degraded.append(f"{name}: {missing}")
        return missing is None

    user_notif = need(
        "seccomp user notification",
        "the parent records each violation and decides kill/errno/log",
        None if feats.user_notif else "kernel lacks SECCOMP_RET_USER_NOTIF",
    )

    unveils = effective_unveils(policy)
    abi = feats.landlock_abi
    ll: landlock.LandlockPlan | None = None
    if need(
        "Landlock", "unveil: the filesystem view", None if abi >= 1 else "Landlock not available"
    ):
        paths = path_rules(unveils)
        used = 0
        for rule in paths:
            used |= rule.access
        # resolve_unix matters only to agents that can make unix sockets; see below.
        for right in landlock.right_names(used & ~landlock.RESOLVE_UNIX):
            bit = next(b for b, n in landlock.FS_RIGHT_NAMES.items() if n == right)
            first = landlock.FS_RIGHT_ABI[bit]
            need(
                f"Landlock {right}",
                "a permission letter of unveil",
                None if abi >= first else f"needs Landlock ABI {first}, kernel has {abi}",
            )
        # 'unix' without Landlock's resolve_unix (ABI 9): the parent decides and performs
        # the calls that reach pathname sockets (see seccomp_rules), so nothing is missing.
        net = policy.network
        handled_net = 0
        if net is not None:
            ok = need(
                "Landlock TCP rules",
                "network.connect / network.bind",
                None
                if abi >= landlock.NET_ABI
                else f"needs Landlock ABI {landlock.NET_ABI}, kernel has {abi}",
            )
            handled_net = landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP if ok else 0
        elif "inet" not in policy.pledge and abi >= landlock.NET_ABI:
            # No inet: seccomp already refuses socket(); Landlock refuses TCP as well.
            handled_net = landlock.NET_BIND_TCP | landlock.NET_CONNECT_TCP
        scopes = 0
        if need(
            "Landlock scopes",
            "no signals or abstract unix sockets to processes outside the sandbox",
            None
            if abi >= landlock.SCOPE_ABI
            else f"needs Landlock ABI {landlock.SCOPE_ABI}, kernel has {abi}",
        ):
            scopes = landlock.SCOPE_ABSTRACT_UNIX_SOCKET | landlock.SCOPE_SIGNAL
        ll = landlock.LandlockPlan(
            handled_fs=landlock.all_fs_rights(abi),
            paths=tuple(paths),
            handled_net=handled_net,
            connect_ports=net.connect if net and handled_net else (),
            bind_ports=net.bind if net and handled_net else (),
            scopes=scopes,
            abi=abi,
            # Ask the kernel to log the program's refusals only when they are read.
            restrict_flags=landlock.RESTRICT_SELF_LOG_NEW_EXEC_ON if feats.landlock_audit else 0,
        )

    # The agent's pid, mount and network namespaces: root makes them directly, an ordinary
    # user inside a user namespace of the agent's own (sandbox.parent.reaper).
    namespaces = None if feats.namespaces else feats.namespaces_refused
    pidns = need(
        "pid namespace",
        "nothing the agent starts outlives the launcher; the agent cannot see or signal "
        "outside processes",
        namespaces,
    )

    noexec: tuple[str, ...] = ()
    # With prot_exec or jit the agent can run code it writes into memory anyway: noexec
    # mounts would then cost root (a mount namespace) and protect nothing.
    if not policy.pledge & {"prot_exec", "jit"}:
        present = [u for u in unveils if os.path.exists(u.path)]
        # Directories and regular files only: a device such as /dev/null: rw stays as is.
        writable = sorted(
            {
                os.path.realpath(u.path)
                for u in present
                if (u.perms & {"w", "c"})
                and "x" not in u.perms
                and (os.path.isdir(u.path) or os.path.isfile(u.path))
            }
        )
        others = sorted({os.path.realpath(u.path) for u in present} - set(writable))
        writable = mounts.noexec_points(writable, others)
        if writable and need(
            "noexec writable paths",
            "no executable mapping of a file the agent could have written (a private "
            "mount namespace)",
            namespaces,
        ):
            noexec = tuple(writable)

    lim = policy.limits
    if (lim.memory is not None or lim.processes is not None) and not need(
        "cgroup pids+memory",
        "limits.processes / limits.memory for the whole process tree",
        feats.cgroups_refused or None,
    ):
        lim = replace(lim, memory=None, processes=None)

    if policy.user is not None:
        need("root", f"user: {policy.user}", None if feats.root else "the launcher is not root")

    dns_relay = (
        "dns" in policy.pledge
        and "inet" not in policy.pledge
        and need(
            "network namespace for dns",
            "promise 'dns' without 'inet': no datagram may leave but DNS queries (sendmsg "
            "carries its destination where the filter cannot read it)",
            namespaces,
        )
    )

    resolve_unix = abi >= landlock.FS_RIGHT_ABI[landlock.RESOLVE_UNIX]
    parent_unix = "unix" in policy.pledge and not resolve_unix
    # Abstract sockets are named per network namespace: in a namespace of its own (made as
    # for dns; 'inet' needs the host's) the ones the parent connects to are the agent's.
    own_netns = dns_relay or (parent_unix and "inet" not in policy.pledge and feats.namespaces)

    rlimits = tuple(
        (RLIMIT_OF[name], int(value))
        for name, value in (("cpu", lim.cpu), ("files", lim.files), ("file_size", lim.file_size))
        if value is not None
    )

    env = {k: environ[k] for k in policy.env.keep if k in environ}
    env.update(policy.env.set)
    env[ENV_BROKER_FD] = str(BROKER_FD)
    env[ENV_AGENT] = policy.name
    if policy.lock == "agent":
        env[ENV_LOCK] = "agent"
        env[ENV_VIOLATION] = policy.violation
        if ll is not None and ll.restrict_flags:
            env[ENV_LANDLOCK_FLAGS] = str(ll.restrict_flags)

    rules = seccomp_rules(
        policy.pledge,
        policy.execpromises,
        resolve_unix=resolve_unix,
        self_pid=AGENT_PID_IN_NAMESPACE if pidns else None,
    )
    # lock: agent builds its filter in the agent (sandbox.agent.pledge): not traced there.
    trace_unveil = trace_unveil and policy.lock == "exec" and user_notif
    if trace_unveil:
        rules = trace_rules(rules)
    return Plan(
        policy=policy,
        rules=rules,
        landlock=ll,
        unveils=unveils,
        noexec=noexec,
        rlimits=rlimits,
        cgroup_memory=lim.memory,
        cgroup_processes=lim.processes,
        env=env,
        requirements=tuple(reqs),
        user_notif=user_notif,
        degraded=tuple(degraded),
        dns_relay=dns_relay,
        pidns=pidns,
        userns=pidns and not feats.root,
        landlock_audit=ll is not None and bool(ll.restrict_flags),
        # An ordinary user outside a user namespace holds no capability but cannot empty its
        # bounding set; under no_new_privs no exec can add one (sandbox.enforce.hygiene).
        capabilities="all dropped"
        if feats.root or pidns
        else "none held; bounding set kept (no_new_privs: no exec can gain one)",
        trace_unveil=trace_unveil,
        parent_unix=parent_unix,
        own_netns=own_netns,
        resolve_unix=resolve_unix,
        brought=brought_files(policy.pledge),
    )


def check_enforceable(plan: Plan) -> None:
    """Fail closed: refuse a plan that misses a mechanism, unless best_effort."""
    missing = plan.missing
    if missing and not plan.policy.best_effort:
        lines = [f"  {r.name} ({r.why}): {r.missing}" for r in missing]
        raise SetupError(
            "this kernel cannot enforce the policy fully (set best_effort: true to run anyway):\n"
            + "\n".join(lines)
        )
    for u in plan.unveils:
        if not u.optional and not os.path.exists(u.path):
            raise SetupError(f"unveil {u.path}: no such file or directory")
