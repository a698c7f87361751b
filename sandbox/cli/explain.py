"""`sandbox explain` and `sandbox doctor`: the plan and the kernel's features, for people."""

from __future__ import annotations

import os
from typing import Any

from sandbox.enforce import landlock
from sandbox.enforce.kernel import Features, probe
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
        "enforced": plan.enforced(),
        "missing": [{"name": r.name, "why": r.why, "missing": r.missing} for r in plan.missing],
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
        },
        "seccomp_actions": sorted(feats.seccomp_actions),
        "seccomp_user_notification": feats.user_notif,
        "root": feats.root,
        "cgroup_v1_controllers": sorted(feats.cgroup_v1),
        "cgroup_v2_controllers": sorted(feats.cgroup_v2),
        "noexec_mounts": feats.mount_ns,
        "memfd_noexec_seal": feats.memfd_noexec,
    }
    if policy is not None:
        plan: Plan = compile_plan(policy, feats)
        data["policy"] = policy.name
        data["lost_under_best_effort"] = [f"{r.name}: {r.missing}" for r in plan.missing]
    return data


def doctor_text(policy: Policy | None = None, feats: Features | None = None) -> str:
    d = doctor_json(policy, feats)
    yes = {True: "yes", False: "NO"}
    lines = [f"Landlock ABI                {d['landlock_abi']}"]
    lines += [f"  {k:<25} {yes[v]}" for k, v in d["landlock"].items()]
    lines += [
        f"seccomp actions             {' '.join(d['seccomp_actions'])}",
        f"seccomp user notification   {yes[d['seccomp_user_notification']]}",
        f"running as root             {yes[d['root']]}",
        f"cgroup v1 controllers       {' '.join(d['cgroup_v1_controllers']) or '-'}",
        f"cgroup v2 controllers       {' '.join(d['cgroup_v2_controllers']) or '-'}",
        f"noexec writable paths       {yes[d['noexec_mounts']]}",
        f"memfd MFD_NOEXEC_SEAL       {yes[d['memfd_noexec_seal']]}",
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
