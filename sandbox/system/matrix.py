"""`sandbox explain SYSTEM`: the capability matrix, agents by resources, from the policies.

As outheis's architecture document draws it (agent x vault, insights, ..., network,
execute), with the messaging rights beside: whom each agent may send to (its NAME:send
capabilities) and who may send to it. A directory counts for an agent whether it reaches
it through the parent (capabilities on a dir resource) or by its own unveil.
"""

from __future__ import annotations

from typing import Any

from sandbox.policy.model import Policy, path_within
from sandbox.system.model import System

READ = frozenset({"read", "list"})
WRITE = frozenset({"write", "create", "delete"})


def _dirs(system: System) -> dict[str, str]:
    """Every dir resource of the system's policies: path -> column name."""
    out: dict[str, str] = {}
    for spec in system.agents.values():
        for res in spec.policy.resources.values():
            if res.type == "dir" and res.path is not None:
                out.setdefault(res.path, res.name)
    return out


def _access(policy: Policy, path: str) -> set[str]:
    got: set[str] = set()
    for res in policy.resources.values():
        if res.type == "dir" and res.path == path:
            rights = {right for name, right in policy.capabilities if name == res.name}
            got |= {"read"} if rights & READ else set()
            got |= {"write"} if rights & WRITE else set()
    for u in policy.unveil:
        if path_within(path, u.path):
            got |= {"read"} if "r" in u.perms else set()
            got |= {"write"} if u.perms & {"w", "c"} else set()
    return got


def matrix(system: System) -> dict[str, Any]:
    dirs = _dirs(system)
    senders: dict[str, list[str]] = {name: [] for name in system.agents}
    for name, spec in system.agents.items():
        for to in sorted(spec.sends_to):
            senders.setdefault(to, []).append(name)
    rows: dict[str, Any] = {}
    for name in system.tree.agents():
        spec = system.agents[name]
        pol = spec.policy
        http = sorted(r.name for r in pol.resources.values() if r.type == "http")
        net = sorted(pol.pledge & {"inet", "dns"})
        rows[name] = {
            "resources": {
                col: sorted(_access(pol, path), key=["read", "write"].index)
                for path, col in dirs.items()
            },
            "network": [*net, *(f"http:{h}" for h in http)],
            "execute": sorted(pol.execpromises or ()) if "exec" in pol.pledge else None,
            "sends_to": sorted(spec.sends_to),
            "receives_from": sorted(senders.get(name, [])),
            "qos": spec.qos,
            "restart": spec.restart,
            "policy": spec.policy_path,
        }
    return {"system": system.name, "source": system.source, "route": system.route, "agents": rows}


def format_matrix(system: System) -> str:
    data = matrix(system)
    cols = list(dict.fromkeys(c for row in data["agents"].values() for c in row["resources"]))
    head = ["agent", *cols, "network", "execute", "sends to", "qos", "restart"]
    table: list[list[str]] = []
    for name, row in data["agents"].items():
        cells = [name]
        cells += [", ".join(row["resources"][c]) or "-" for c in cols]
        cells.append(", ".join(row["network"]) or "-")
        ex = row["execute"]
        cells.append("-" if ex is None else f"yes ({' '.join(ex) or 'no promises'})")
        cells.append(", ".join(row["sends_to"]) or "-")
        cells += [row["qos"], row["restart"]]
        table.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"system {data['system']} ({data['source']}); user messages go to {data['route']}"]
    out += [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in table]
    out.append("")
    out.append(
        "Messages are capabilities: an agent sends only where its policy promises NAME:send;"
    )
    out.append("a reply needs none (it goes to the sender of the request, once).")
    for name, row in data["agents"].items():
        out.append(f"  {name}: receives from {', '.join(row['receives_from']) or 'users only'}")
    return "\n".join(out)
