"""`sandbox explain` and `sandbox doctor`: the plan and the kernel's features, for people."""

from __future__ import annotations

import os
from typing import Any

from sandbox.enforce import landlock
from sandbox.enforce.kernel import Features, probe, probe_userns
from sandbox.enforce.plan import Plan, compile_plan
from sandbox.enforce.promises import PROMISES
from sandbox.policy.model import Policy, effective_perms, path_within, perm_string


def _syscalls_of(promise: str) -> list[str]:
    p = PROMISES.get(promise)
    return sorted({r.syscall for r in p.rules}) if p else []


def explain_json(policy: Policy, feats: Features | None = None) -> dict[str, Any]:
    feats = probe() if feats is None else feats
    plan = compile_plan(policy, feats)
    lim = policy.limits
    return {
        "name": policy.name,
        "policy": policy.source,
        "policy_sha256": policy.sha256,
        "command": list(policy.command),
        "lock": policy.lock,
        "violation": policy.violation,
        "promises": {p: _syscalls_of(p) for p in sorted(policy.pledge)},
        # What the promises held give up (jit: W^X), said where it is decided.
        "weakens": {p: PROMISES[p].weakens for p in sorted(policy.pledge) if PROMISES[p].weakens},
        "execpromises": None if policy.execpromises is None else sorted(policy.execpromises),
        "capabilities": sorted(f"{r}:{right}" for r, right in policy.capabilities),
        "unveil": [
            {
                "path": u.path,
                "perms": perm_string(u.perms),
                # Landlock grants the union of enclosing rules: show where that is wider.
                "effective": perm_string(effective_perms(u.path, plan.unveils)),
                "landlock": landlock.right_names(landlock.rights_for(u.perms)),
                "optional": u.optional,
                "noexec": any(path_within(os.path.realpath(u.path), n) for n in plan.noexec),
            }
            for u in plan.unveils
        ],
        "network": None
        if policy.network is None
        else {"connect": list(policy.network.connect), "bind": list(policy.network.bind)},
        "tcp": _tcp_summary(policy),
        "resources": {
            name: {"type": r.type, "path": r.path, "url": r.url, "headers": sorted(r.headers)}
            for name, r in policy.resources.items()
        },
        "limits": {
            "memory": lim.memory,
            "cpu": lim.cpu,
            "wall": lim.wall,
            "processes": lim.processes,
            "files": lim.files,
            "file_size": lim.file_size,
        },
        "env": dict(sorted(plan.env.items())),
        "performed_by_parent": _performed(plan),
        "enforced": plan.enforced(),
        "missing": [{"name": r.name, "why": r.why, "missing": r.missing} for r in plan.missing],
    }


def _performed(plan: Plan) -> dict[str, Any]:
    """The calls the parent decides and performs for this policy (SPEC section 8), and the
    files the promises bring for an agent without rpath."""
    from sandbox.enforce.promises import HANDLER_SUMMARY

    calls: dict[str, set[str]] = {}
    for r in plan.rules:
        if r.action == "notify" and r.handler in HANDLER_SUMMARY:
            calls.setdefault(r.handler, set()).add(r.syscall)
    return {
        "calls": [
            {"calls": sorted(names), "how": HANDLER_SUMMARY[h]}
            for h, names in sorted(calls.items())
        ],
        "brought": [{"path": p, "perms": perms, "promise": pr} for p, perms, pr in plan.brought],
    }


def _tcp_summary(policy: Policy) -> str:
    if "inet" not in policy.pledge:
        return "none (no 'inet')"
    if policy.network is None:
        return "any port (no network: section)"
    net = policy.network
    return f"connect {list(net.connect) or 'none'}, bind {list(net.bind) or 'none'}"


def explain_text(policy: Policy, feats: Features | None = None) -> str:
    data = explain_json(policy, feats)
    out = [
        f"policy      {data['name']}  ({data['policy'] or 'inline'})",
        f"command     {' '.join(data['command']) or '(given on the command line)'}",
        f"lock        {data['lock']}      violation: {data['violation']}",
        "",
        "PROMISE      SYSTEM CALLS",
    ]
    for promise, calls in data["promises"].items():
        out.append(f"{promise:<12} {', '.join(calls) if calls else '(paths only)'}")
    if data["execpromises"] is not None:
        out.append(f"execpromises {' '.join(data['execpromises']) or '(none)'}")
    for promise, text in data["weakens"].items():
        out.append(f"WEAKENS      {promise}: {text}")
    if data["capabilities"]:
        out += ["", "CAPABILITY (performed by the parent)"]
        out += [f"  {c}" for c in data["capabilities"]]
    out += ["", "UNVEIL                                   PERMS  LANDLOCK RIGHTS"]
    for u in data["unveil"]:
        flags = " (optional)" if u["optional"] else ""
        flags += " noexec" if u["noexec"] else ""
        if u["effective"] != u["perms"]:
            flags += f" (Landlock grants {u['effective']}: the union with an enclosing unveil)"
        out.append(
            f"{u['path']:<40} {u['perms'] or '-':<6} {', '.join(u['landlock']) or 'none'}{flags}"
        )
    done = data["performed_by_parent"]
    if done["calls"] or done["brought"]:
        out += ["", "PERFORMED BY THE PARENT (decided from the agent's memory, made as the agent)"]
        out += [f"  {', '.join(c['calls'])}: {c['how']}" for c in done["calls"]]
        brought = [f"{b['path']} ({b['promise']})" for b in done["brought"] if b["perms"]]
        if brought:
            out.append(f"  opened without rpath: {', '.join(brought)}")
    out += ["", f"TCP         {data['tcp']}"]
    if data["resources"]:
        out += ["", "RESOURCE     TYPE  WHERE"]
        for name, r in data["resources"].items():
            out.append(f"{name:<12} {r['type']:<5} {r['path'] or r['url']}")
    lim = {k: v for k, v in data["limits"].items() if v is not None}
    out += ["", "LIMITS      " + (", ".join(f"{k}={v}" for k, v in lim.items()) or "none")]
    out.append("ENV         " + (", ".join(sorted(data["env"])) or "none"))
    if data["missing"]:
        out += ["", "NOT ENFORCEABLE ON THIS KERNEL (refused unless best_effort):"]
        out += [f"  {m['name']}: {m['missing']}" for m in data["missing"]]
    return "\n".join(out)


def _for_this_user(feats: Features) -> dict[str, Any]:
    """What each mechanism needs, and whether this launcher (this user) has it."""
    ns = "root" if feats.root else ("a user namespace" if feats.userns else None)
    if feats.cgroup_v2_place is not None:
        limits = f"cgroup v2, delegated: {feats.cgroup_v2_place}"
    elif feats.cgroups:
        limits = "cgroup v1 (root)"
    else:
        limits = None
    return {
        "namespaces": ns,
        "namespaces_refused": None if ns else feats.namespaces_refused,
        "pid_namespace": bool(ns),
        "noexec_writable_paths": bool(ns),
        "dns_without_inet": bool(ns),
        "capabilities": "all dropped"
        if ns
        else "none held; bounding set kept (harmless under no_new_privs)",
        "limits_memory_processes": limits,
        "limits_refused": None if limits else feats.cgroups_refused,
        "user_switch": feats.root,
        "landlock_refusals": "reported from the kernel's audit records"
        if feats.landlock_audit
        else None,
        "landlock_refusals_refused": None if feats.landlock_audit else feats.kernel_audit_refused,
    }


def doctor_json(policy: Policy | None = None, feats: Features | None = None) -> dict[str, Any]:
    feats = probe() if feats is None else feats
    abi = feats.landlock_abi
    data: dict[str, Any] = {
        "landlock_abi": abi,
        "landlock": {
            "filesystem": abi >= 1,
            "refer": abi >= 2,
            "truncate": abi >= 3,
            "tcp": abi >= landlock.NET_ABI,
            "ioctl_dev": abi >= 5,
            "scopes": abi >= landlock.SCOPE_ABI,
            "audit_records": abi >= landlock.LOG_ABI,
        },
        "seccomp_actions": sorted(feats.seccomp_actions),
        "seccomp_user_notification": feats.user_notif,
        "root": feats.root,
        "uid": os.geteuid(),
        # For root, the question is what ordinary users get: asked as nobody, in a child.
        "unprivileged_user_namespaces": probe_userns() if feats.root else feats.userns_refused,
        "cgroup_v1_controllers": sorted(feats.cgroup_v1),
        "cgroup_v2_controllers": sorted(feats.cgroup_v2),
        "cgroup_v2_delegated": feats.cgroup_v2_place,
        "cgroup_v2_refused": feats.cgroup_v2_refused or None,
        "noexec_mounts": feats.mount_ns,
        "memfd_noexec_seal": feats.memfd_noexec,
        "this_user": _for_this_user(feats),
    }
    data["audit_log"] = audit_log_space()
    if policy is not None:
        plan: Plan = compile_plan(policy, feats)
        data["policy"] = policy.name
        data["lost_under_best_effort"] = [f"{r.name}: {r.missing}" for r in plan.missing]
    return data


def audit_log_space(path: str | None = None) -> dict[str, Any]:
    """Where the default audit log is, the free space there, and what the log needs."""
    import os

    from sandbox.cli.main import default_audit_log
    from sandbox.parent import ratelimit

    path = path or default_audit_log()
    probe_dir = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(probe_dir) and probe_dir != "/":
        probe_dir = os.path.dirname(probe_dir)
    try:
        st = os.statvfs(probe_dir)
        free: int | None = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    return {
        "path": path,
        "free_bytes": free,
        "flood_bytes_per_agent_hour": ratelimit.flood_bytes_per_hour(),
        "bytes_per_operation": 400,
    }


def doctor_text(policy: Policy | None = None, feats: Features | None = None) -> str:
    d = doctor_json(policy, feats)
    yes = {True: "yes", False: "NO"}
    u = d["this_user"]
    userns = d["unprivileged_user_namespaces"]
    lines = [f"Landlock ABI                {d['landlock_abi']}"]
    lines += [f"  {k:<25} {yes[v]}" for k, v in d["landlock"].items()]
    lines += [
        f"seccomp actions             {' '.join(d['seccomp_actions'])}",
        f"seccomp user notification   {yes[d['seccomp_user_notification']]}",
        f"running as root             {yes[d['root']]} (uid {d['uid']})",
        f"{'unprivileged userns':<28}" + ("yes" if userns is None else f"NO: {userns}"),
        f"cgroup v1 controllers       {' '.join(d['cgroup_v1_controllers']) or '-'}",
        f"cgroup v2 controllers       {' '.join(d['cgroup_v2_controllers']) or '-'}",
        "cgroup v2 delegated         "
        + (d["cgroup_v2_delegated"] or f"NO: {d['cgroup_v2_refused']}"),
        f"memfd MFD_NOEXEC_SEAL       {yes[d['memfd_noexec_seal']]}",
        "",
        f"for this user (uid {d['uid']}):",
        "  pid, mount, network namespaces  "
        + (f"yes, {u['namespaces']}" if u["namespaces"] else f"NO: {u['namespaces_refused']}"),
        "    (the reaper's pid namespace, noexec writable paths, dns without inet)",
        f"  capabilities                    {u['capabilities']}",
        "  limits.memory/processes         "
        + (u["limits_memory_processes"] or f"NO: {u['limits_refused']}"),
        f"  user: (run as another user)     {'yes' if u['user_switch'] else 'NO: needs root'}",
        "  paths Landlock refuses, named   "
        + (
            u["landlock_refusals"]
            if u["landlock_refusals"]
            else f"NO: {u['landlock_refusals_refused']}; `sandbox run --trace-unveil` "
            "has the parent name them instead (slower)"
        ),
    ]
    log = d["audit_log"]
    free = "unknown" if log["free_bytes"] is None else f"{log['free_bytes'] / 1e6:,.0f} MB free"
    lines += [
        f"audit log                   {log['path']} ({free})",
        "  needs                     about "
        f"{log['flood_bytes_per_agent_hour'] / 1e6:.0f} MB per agent-hour of refusals at worst "
        f"(rate-limited), {log['bytes_per_operation']} bytes per brokered operation; a full "
        "disk refuses operations and ends the agent, the log stays intact",
    ]
    if "policy" in d:
        lost = d["lost_under_best_effort"]
        lines += [
            "",
            f"policy {d['policy']}: "
            + ("fully enforceable" if not lost else "would lose under best_effort:"),
        ]
        lines += [f"  {x}" for x in lost]
    return "\n".join(lines)


def kernel_audit_switch(on: bool) -> str:
    """`sandbox doctor --enable-kernel-audit` / `--disable-kernel-audit` (root): turn the
    kernel's audit on or off, host-wide. Raises SetupError with the reason if it cannot."""
    from sandbox import kaudit
    from sandbox.errors import SetupError

    try:
        before = kaudit.status()
        if before.enabled == 2:
            raise SetupError("kernel audit is locked (enabled=2) until the next boot")
        if before.pid and not on:
            raise SetupError(f"auditd (pid {before.pid}) manages kernel audit: use auditctl -e 0")
        kaudit.set_enabled(1 if on else 0)
        after = kaudit.status()
    except OSError as e:
        raise SetupError(f"kernel audit: {e.strerror} (changing it needs root)") from e
    state = "on" if after.enabled else "off"
    note = ""
    if on and not after.pid:
        note = (
            " (no auditd runs: the kernel also writes each audit record to its own log, "
            "rate-limited; turn it off again with --disable-kernel-audit)"
        )
    return f"kernel audit was {'on' if before.enabled else 'off'}, is now {state}{note}"
