"""`sandbox export POLICY --format oci|systemd|k8s`: the same policy for other engines.

- **oci**: the policy's system-call table as an OCI runtime seccomp profile (runc, crun,
  Docker, Podman, Kubernetes Localhost profiles): every row of the promise table with its
  argument conditions, ENOSYS rows as ENOSYS, the penalty as the default action.
- **systemd**: a service unit with the matching directives: SystemCallFilter (names only),
  the unveil as a view of bind mounts on an empty root, address families, limits.
- **k8s**: a ConfigMap holding the policy and a Pod that runs the command under
  `sandbox run` with it, with the limits Kubernetes enforces itself.

A target that cannot express part of a policy (argument checks beyond its syntax, Landlock
paths without a counterpart, the parent's brokered and checked calls, capabilities on
resources) gets it listed: in comments in the output (for JSON, in the key
"x-outheis-sandbox", which runtimes ignore) and in warnings on stderr. Nothing is dropped
silently, and where a target can only choose between wider and narrower, the exported
profile is narrower, except where the target needs more to start the program at all
(execve, which runtimes and systemd call after loading the filter), which is said.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sandbox.enforce.plan import effective_unveils
from sandbox.enforce.promises import ALWAYS, UNSUPPORTED, describe_rule, rules_for
from sandbox.enforce.rules import SELF_PID, Rule
from sandbox.policy.model import Policy, perm_string

FORMATS = ("oci", "systemd", "k8s")
DEFAULT_IMAGE = "outheis-sandbox:latest"
POLICY_MOUNT = "/etc/outheis-sandbox"
AUDIT_DIR = "/var/log/outheis-sandbox"  # an emptyDir: the root filesystem is read-only


@dataclass
class Export:
    text: str
    not_expressed: list[str] = field(default_factory=list)


def _rules(policy: Policy) -> list[Rule]:
    return list(dict.fromkeys([*ALWAYS, *rules_for(policy.pledge)]))


def _command(policy: Policy, command: Sequence[str] | None) -> list[str]:
    argv = list(command) if command else list(policy.command)
    if argv and "/" not in argv[0]:
        # Never whatever is first on the exporting user's PATH: the policy's own PATH, or
        # the system's directories.
        path = policy.env.set.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        found = shutil.which(argv[0], path=path)
        if found:
            argv[0] = found
    return argv


def _common_notes(policy: Policy, target: str) -> list[str]:
    notes: list[str] = []
    if policy.capabilities:
        caps = " ".join(sorted(f"{r}:{right}" for r, right in policy.capabilities))
        notes.append(
            f"capabilities ({caps}): the sandbox parent performs them on declared resources; "
            f"{target} has no parent to ask"
        )
    if policy.execpromises is not None and target != "k8s":
        notes.append(
            f"execpromises ({' '.join(sorted(policy.execpromises)) or 'none'}): one filter "
            "for every process; programs the agent executes get the pledge"
        )
    if policy.lock == "agent" and target != "k8s":
        notes.append("lock: agent: the filter holds from the exec on (as lock: exec)")
    return notes


# --- OCI ----------------------------------------------------------------------------------------

_OCI_OPS = {
    "eq": "SCMP_CMP_EQ",
    "ne": "SCMP_CMP_NE",
    "lt": "SCMP_CMP_LT",
    "le": "SCMP_CMP_LE",
    "gt": "SCMP_CMP_GT",
    "ge": "SCMP_CMP_GE",
    "masked_eq": "SCMP_CMP_MASKED_EQ",
}
_OCI_DEFAULT = {"kill": "SCMP_ACT_KILL_PROCESS", "errno": "SCMP_ACT_ERRNO", "log": "SCMP_ACT_LOG"}
ENOSYS = 38
EPERM = 1


def _oci_arg(rule: Rule) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for a in rule.args:
        if a.op == "masked_eq":  # libseccomp's MASKED_EQ: value is the mask, valueTwo the datum
            out.append(
                {"index": a.index, "value": a.mask, "valueTwo": a.value, "op": _OCI_OPS[a.op]}
            )
        else:
            out.append({"index": a.index, "value": a.value, "op": _OCI_OPS[a.op]})
    return out


def oci(policy: Policy) -> Export:
    notes = _common_notes(policy, "an OCI runtime")
    plain: set[str] = set()
    conditional: list[tuple[str, dict[str, object]]] = []
    enosys: set[str] = set()
    dropped: list[str] = []
    for rule in _rules(policy):
        if any(a.value == SELF_PID for a in rule.args):
            dropped.append(describe_rule(rule))
            continue
        if rule.action == "notify" and rule.handler != "unsupported":
            dropped.append(describe_rule(rule))
            continue
        if rule.action == "enosys" and not rule.args:
            enosys.add(rule.syscall)
            continue
        entry: dict[str, object] = {"names": [rule.syscall]}
        if rule.action == "enosys":
            entry.update(action="SCMP_ACT_ERRNO", errnoRet=ENOSYS)
        elif rule.action == "notify":
            # The parent answers these with the errno of a kernel without the feature (TCP
            # Fast Open, MPTCP); the profile can say the same.
            entry.update(action="SCMP_ACT_ERRNO", errnoRet=UNSUPPORTED[rule.syscall][0])
        else:
            entry["action"] = "SCMP_ACT_ALLOW"
        if rule.args:
            entry["args"] = _oci_arg(rule)
            conditional.append((rule.syscall, entry))
        else:
            plain.add(rule.syscall)
    if "exec" not in policy.pledge:
        plain.add("execve")
        notes.append(
            "exec: the runtime loads the filter before it executes the command, so execve "
            "is allowed for every process (the policy allows only the launcher's exec)"
        )
    if dropped:
        notes.append(
            "calls the sandbox parent decides have no counterpart and are refused: "
            + "; ".join(dropped)
        )
    notes += _landlock_notes(policy)
    if policy.limits != type(policy.limits)():
        notes.append("limits: set them as the container's resources (memory, pids, cpu)")
    notes.append(
        "calls of other architectures and x32: the runtime's bad-architecture action "
        "(libseccomp kills), as the sandbox kills them"
    )
    notes.append(
        "never-allowed calls get the default action instead of always killing "
        "(io_uring, bpf, ptrace, mount, ... are in no row)"
    )
    syscalls: list[dict[str, object]] = [
        {"names": sorted(plain), "action": "SCMP_ACT_ALLOW"},
        # An unconditional allow supersedes conditional rows of the same call.
        *(
            e
            for call, e in sorted(conditional, key=lambda ce: (ce[0], json.dumps(ce[1])))
            if call not in plain
        ),
    ]
    if enosys:
        syscalls.append({"names": sorted(enosys), "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    profile: dict[str, object] = {
        "defaultAction": _OCI_DEFAULT[policy.violation],
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
        "x-outheis-sandbox": {
            "policy": policy.name,
            "policy_sha256": policy.sha256,
            "pledge": sorted(policy.pledge),
            "not_expressed": notes,
        },
    }
    if policy.violation != "errno":
        profile.pop("defaultErrnoRet")  # runtimes refuse an errno for another action
    return Export(json.dumps(profile, indent=2) + "\n", notes)


def _landlock_notes(policy: Policy) -> list[str]:
    notes: list[str] = []
    unveils = effective_unveils(policy)
    if unveils:
        shown = ", ".join(f"{u.path}:{perm_string(u.perms) or '-'}" for u in unveils[:12])
        more = f" and {len(unveils) - 12} more" if len(unveils) > 12 else ""
        notes.append(
            f"unveil (Landlock) has no counterpart in a seccomp profile: {shown}{more}; "
            "give the container only these paths with its mounts"
        )
    if policy.network is not None:
        notes.append(
            f"network (Landlock TCP): connect {list(policy.network.connect)}, bind "
            f"{list(policy.network.bind)} has no counterpart; use a NetworkPolicy"
        )
    return notes


# --- systemd --------------------------------------------------------------------------------------

# Conditions that a dedicated directive of systemd covers: call -> directive.
_COVERED = {
    "mmap": "MemoryDenyWriteExecute=yes",
    "mprotect": "MemoryDenyWriteExecute=yes",
    "pkey_mprotect": "MemoryDenyWriteExecute=yes",
    "clone": "RestrictNamespaces=yes",
    "socket": "RestrictAddressFamilies=",
    "socketpair": "RestrictAddressFamilies=",
    "personality": "LockPersonality=yes",
}
_QOS = {
    "utility": [
        "Nice=5",
        "CPUSchedulingPolicy=batch",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
    ],
    "background": ["Nice=19", "CPUSchedulingPolicy=idle", "IOSchedulingClass=idle"],
}


def _unit_path(path: str) -> str:
    """A path as systemd's Bind*Paths= and ExecPaths= read it (C escapes, ':' escaped)."""
    out: list[str] = []
    for ch in path:
        if ch in "\\: \"'" or not ch.isprintable():
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
        else:
            out.append(ch)
    return "".join(out)


def _unit_word(text: str) -> str:
    """An ExecStart= argument: quoted, with systemd's specifiers (%) and $ escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def systemd(policy: Policy, command: Sequence[str] | None = None) -> Export:
    notes = _common_notes(policy, "systemd")
    argv = _command(policy, command)
    rules = _rules(policy)
    names: set[str] = set()
    conditions: dict[str, list[str]] = {}
    dropped: list[str] = []
    for rule in rules:
        if rule.action == "enosys":
            continue  # left out: systemd's default action, see below
        if rule.action == "notify" or any(a.value == SELF_PID for a in rule.args):
            dropped.append(describe_rule(rule))
            continue
        names.add(rule.syscall)
        if rule.args:
            # "ioctl: request == FIONREAD" -> "request == FIONREAD", grouped by call below
            text = describe_rule(rule).removeprefix(f"{rule.syscall}: ")
            conditions.setdefault(rule.syscall, []).append(text)
    unconditional = {r.syscall for r in rules if r.action == "allow" and not r.args}
    loose = []
    for call in sorted(conditions):
        if call in unconditional:
            continue
        covered = _COVERED.get(call)
        if covered is None:
            loose.append(f"{call} ({' or '.join(conditions[call])})")
    if loose:
        notes.append(
            "argument checks beyond SystemCallFilter= (it takes names only), so these calls "
            "are allowed with any arguments: " + "; ".join(loose)
        )
    enosys = sorted({r.syscall for r in rules if r.action == "enosys" and r.syscall not in names})
    if enosys:
        notes.append(
            f"ENOSYS fallbacks ({', '.join(enosys)}) get the filter's default action "
            "(clone3 gets ENOSYS from RestrictNamespaces=)"
        )
    if dropped:
        notes.append(
            "calls the sandbox parent decides have no counterpart and are refused: "
            + "; ".join(dropped)
        )
    if "exec" not in policy.pledge:
        notes.append("exec: systemd always allows execve (it starts the service with it)")
    lines = [
        f"# Exported by `sandbox export --format systemd` from policy '{policy.name}'",
        f"# ({policy.source or 'inline'}, sha256 {policy.sha256 or '-'}).",
        "# For the whole policy (argument checks, Landlock, the parent), run the command",
        "# under `sandbox run POLICY --` in ExecStart= instead.",
        "[Unit]",
        f"Description=outheis-sandbox policy {policy.name}",
        "",
        "[Service]",
        "Type=exec",
    ]
    if argv:
        lines.append("ExecStart=" + " ".join(_unit_word(a) for a in argv))
    else:
        lines.append("ExecStart=/bin/false")
        notes.append("command: the policy names none; give it after -- (ExecStart=/bin/false)")
    lines += [
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallArchitectures=native",
        "SystemCallFilter=" + " ".join(sorted(names)),
    ]
    if policy.violation == "errno":
        lines.append("SystemCallErrorNumber=EPERM")
    elif policy.violation == "log":
        lines.append("SystemCallErrorNumber=EPERM")
        notes.append("violation: log (calls proceed) has no counterpart: they fail with EPERM")
    families = ["AF_UNIX"]  # socketpair(AF_UNIX) is stdio
    if "inet" in policy.pledge or "dns" in policy.pledge:
        families += ["AF_INET", "AF_INET6"]
    lines.append("RestrictAddressFamilies=" + " ".join(families))
    if not {"inet", "dns", "unix"} & policy.pledge:
        lines.append("PrivateNetwork=yes")
    if "dns" in policy.pledge and "inet" not in policy.pledge:
        notes.append(
            "dns without inet: the parent's checked queries to the nameservers have no "
            "counterpart; any UDP/TCP address is reachable"
        )
    if not {"prot_exec", "jit"} & policy.pledge:
        lines.append("MemoryDenyWriteExecute=yes")
    lines += [
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "PrivateDevices=yes",
        "UMask=0077",
    ]
    if "ps" not in policy.pledge:
        lines.append("ProtectProc=invisible")
    lines += _systemd_view(policy, notes)
    if policy.network is not None:
        if policy.network.bind:
            lines.append("SocketBindAllow=" + " ".join(f"tcp:{p}" for p in policy.network.bind))
        lines.append("SocketBindDeny=any")
        notes.append(
            f"network.connect {list(policy.network.connect)}: systemd filters addresses "
            "(IPAddressAllow=), not ports; connect is not limited by port"
        )
    lim = policy.limits
    for key, value in (
        ("MemoryMax", lim.memory),
        ("TasksMax", lim.processes),
        ("LimitCPU", lim.cpu),
        ("RuntimeMaxSec", None if lim.wall is None else f"{lim.wall:g}"),
        ("LimitNOFILE", lim.files),
        ("LimitFSIZE", lim.file_size),
    ):
        if value is not None:
            lines.append(f"{key}={value}")
    env = [f"{k}={v}" for k, v in policy.env.set.items()]
    if env:
        lines.append("Environment=" + " ".join(_unit_word(e) for e in env))
    keep = [k for k in policy.env.keep if k not in policy.env.set]
    if keep:
        lines.append("PassEnvironment=" + " ".join(keep))
    if policy.user is not None:
        lines.append(f"User={policy.user}")
    lines += _QOS.get(policy.qos or "", [])
    lines += ["", "[Install]", "WantedBy=multi-user.target"]
    notes.append(
        "the audit log: systemd's journal records the service, not each refused call "
        "(use SystemCallLog= to log calls)"
    )
    cut = lines.index("[Unit]")
    head = [*lines[:cut], *(f"# NOT EXPRESSED: {n}" for n in notes), *lines[cut:]]
    return Export("\n".join(head) + "\n", notes)


def _systemd_view(policy: Policy, notes: list[str]) -> list[str]:
    """The unveil as a view: an empty read-only root with the unveiled paths bound in."""
    unveils = effective_unveils(policy)
    ro: list[str] = []
    rw: list[str] = []
    ex: list[str] = []
    for u in unveils:
        entry = ("-" if u.optional else "") + _unit_path(u.path)
        (rw if u.perms & {"w", "c"} else ro).append(entry)
        if "x" in u.perms:
            ex.append(entry)
        if "r" not in u.perms:
            notes.append(
                f"unveil {u.path}: '{perm_string(u.perms) or 'no rights'}': a bind mount "
                "cannot withhold reading"
            )
    notes.append(
        "unveil: Landlock rights per path become bind mounts on an empty root; 'w' and 'c' "
        "are not separate (a writable mount allows both), and stat() of unveiled paths' "
        "parents shows the mount points"
    )
    out = ["TemporaryFileSystem=/:ro", "MountAPIVFS=yes"]
    if ro:
        out.append("BindReadOnlyPaths=" + " ".join(ro))
    if rw:
        out.append("BindPaths=" + " ".join(rw))
    out.append("NoExecPaths=/")
    if ex:
        out.append("ExecPaths=" + " ".join(ex))
    return out


# --- Kubernetes -----------------------------------------------------------------------------------


def _k8s_quantity(n: int) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def policy_yaml(policy: Policy, *, drop: Iterable[str] = ()) -> str:
    """The policy as a policy file (absolute paths, parameters expanded), without `drop`."""
    import yaml

    skip = set(drop)
    doc: dict[str, object] = {"version": 1, "name": policy.name}
    if policy.command:
        doc["command"] = list(policy.command)
    if policy.lock != "exec":
        doc["lock"] = policy.lock
        init: dict[str, object] = {"timeout": f"{policy.init_timeout:g}s"}
        if policy.init_pledge is not None:
            init["pledge"] = " ".join(sorted(policy.init_pledge))
        doc["init"] = init
    doc["pledge"] = policy.promise_string()
    if policy.execpromises is not None:
        doc["execpromises"] = " ".join(sorted(policy.execpromises))
    doc["unveil"] = {
        u.path: {"perms": perm_string(u.perms), "optional": True}
        if u.optional
        else perm_string(u.perms)
        for u in policy.unveil
    }
    if policy.network is not None:
        doc["network"] = {
            "connect": list(policy.network.connect),
            "bind": list(policy.network.bind),
        }
    if policy.resources:
        res: dict[str, object] = {}
        for name, r in policy.resources.items():
            if r.type == "dir":
                res[name] = {"type": "dir", "path": r.path}
            else:
                res[name] = {
                    "type": "http",
                    "url": r.url,
                    "headers": dict(r.headers),
                    "timeout": f"{r.timeout:g}s",
                    "max_bytes": r.max_bytes,
                }
        doc["resources"] = res
    lim = {
        "memory": policy.limits.memory,
        "cpu": None if policy.limits.cpu is None else f"{policy.limits.cpu}s",
        "wall": None if policy.limits.wall is None else f"{policy.limits.wall:g}s",
        "processes": policy.limits.processes,
        "files": policy.limits.files,
        "file_size": policy.limits.file_size,
    }
    lim = {k: v for k, v in lim.items() if v is not None and k not in skip}
    if lim:
        doc["limits"] = lim
    doc["env"] = {"keep": list(policy.env.keep), "set": dict(policy.env.set)}
    doc["violation"] = policy.violation
    if policy.qos is not None:
        doc["qos"] = policy.qos
    if policy.best_effort:
        doc["best_effort"] = True
    if policy.user is not None and "user" not in skip:
        doc["user"] = policy.user
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _literal_dumper() -> type:
    """A safe dumper writing multi-line strings as literal blocks (the embedded policy
    stays readable in the ConfigMap)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def k8s(policy: Policy, command: Sequence[str] | None = None, image: str = DEFAULT_IMAGE) -> Export:
    import yaml

    notes = _common_notes(policy, "k8s")
    argv = list(command) if command else list(policy.command)
    lim = policy.limits
    # The launcher runs as an ordinary user in the container: the limits Kubernetes enforces
    # itself move to the Pod; processes has no per-Pod field.
    moved = ["memory", "processes"]
    if lim.processes is not None:
        notes.append(
            f"limits.processes {lim.processes}: no per-Pod field (the kubelet's podPidsLimit "
            "is per node); not enforced"
        )
    if policy.user is not None:
        notes.append(f"user: {policy.user}: set runAsUser to its uid in the image")
    notes.append(
        "paths in the policy are paths in the image: build it with the programs and the "
        "unveiled files (and outheis-sandbox) at the same places"
    )
    secrets = sorted(
        {
            v[4:]
            for r in policy.resources.values()
            for v in r.headers.values()
            if v.startswith("env:")
        }
    )
    if secrets:
        notes.append(
            f"secrets the parent reads from its environment ({', '.join(secrets)}): add them "
            "to the container's env from a Secret (secretKeyRef)"
        )
    notes.append(
        "the container's seccomp profile is the runtime's default: the launcher needs more "
        "than the agent (fork, seccomp, landlock, user notification); `sandbox run` loads "
        "the policy's filter and Landlock rules inside, stacked on it"
    )
    name = policy.name
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-policy", "labels": _labels(name)},
        "data": {"policy.yaml": policy_yaml(policy, drop=[*moved, "user"])},
    }
    container: dict[str, object] = {
        "name": name,
        "image": image,
        "command": ["sandbox", "run", f"{POLICY_MOUNT}/policy.yaml", "--"],
        "args": argv,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "policy", "mountPath": POLICY_MOUNT, "readOnly": True},
            {"name": "audit", "mountPath": AUDIT_DIR},
        ],
        "env": [{"name": "SANDBOX_AUDIT_LOG", "value": f"{AUDIT_DIR}/audit.jsonl"}],
    }
    if not argv:
        notes.append("command: the policy names none; give it after --")
    if lim.memory is not None:
        q = _k8s_quantity(lim.memory)
        container["resources"] = {"limits": {"memory": q}, "requests": {"memory": q}}
    spec: dict[str, object] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "policy", "configMap": {"name": f"{name}-policy"}},
            {"name": "audit", "emptyDir": {}},
        ],
    }
    if lim.wall is not None:
        spec["activeDeadlineSeconds"] = max(1, int(lim.wall + 0.999))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": _labels(name),
            "annotations": {"outheis.org/policy-sha256": policy.sha256 or ""},
        },
        "spec": spec,
    }
    head = [
        f"# Exported by `sandbox export --format k8s` from policy '{name}'",
        f"# ({policy.source or 'inline'}). The Pod runs the command under `sandbox run` with",
        "# the policy from the ConfigMap; image: " + image,
        *(f"# NOT EXPRESSED: {n}" for n in notes),
    ]
    body = yaml.dump_all(
        [config, pod], Dumper=_literal_dumper(), sort_keys=False, default_flow_style=False
    )
    return Export("\n".join(head) + "\n" + body, notes)


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "outheis-sandbox"}


def export(
    policy: Policy, fmt: str, command: Sequence[str] | None = None, image: str = DEFAULT_IMAGE
) -> Export:
    if fmt == "oci":
        return oci(policy)
    if fmt == "systemd":
        return systemd(policy, command)
    if fmt == "k8s":
        return k8s(policy, command, image)
    raise ValueError(f"unknown format {fmt!r}")
