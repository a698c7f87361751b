"""The data agent: keeps the vault of notes, and touches it only through the parent.

Role: answer requests on stdin ("list", "read NAME", "write NAME TEXT"), one per line.
Powers: vault:read vault:write vault:create vault:list, performed by the parent and
recorded; no direct access to any file, no network, no exec.
"""

from __future__ import annotations

import json
import sys

import sandbox

VAULT = "vault"


def main() -> int:
    parent = sandbox.connect()
    # Init is over: from here on the agent holds only what its role needs.
    sandbox.pledge(f"stdio {VAULT}:read {VAULT}:write {VAULT}:create {VAULT}:list")
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        try:
            if cmd == "list":
                print(json.dumps([e.name for e in parent.list(VAULT, "notes")]))
            elif cmd == "read":
                print(parent.read(VAULT, f"notes/{rest}").decode())
            elif cmd == "write":
                name, _, text = rest.partition(" ")
                parent.write(VAULT, f"notes/{name}", text + "\n")
                print(f"wrote notes/{name}")
            elif cmd == "delete":
                parent.remove(VAULT, f"notes/{rest}")
                print(f"deleted notes/{rest}")
            elif cmd == "open-directly":
                # What a tricked agent would try: the kernel refuses (no 'rpath').
                with open(rest) as f:
                    print(f.read())
            else:
                print(f"unknown request {cmd!r}")
        except (PermissionError, FileNotFoundError, ValueError) as e:
            print(f"refused: {e}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
