"""The relay agent: talks to the user on stdin/stdout, and can do nothing else.

Role: relay each line it reads, upper-cased, as a stand-in for passing messages between a
user and the other agents. Powers: stdio. No files, no network, no exec.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  # socket looks it up lazily; after the lock it could not
import socket
import sys

import sandbox


def main() -> int:
    sandbox.unveil()  # an empty view of the filesystem
    sandbox.pledge("stdio")
    for line in sys.stdin:
        text = line.strip()
        if text == "phone-home":  # what a tricked relay agent might try
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1)
                print("connect: allowed?!")
            except OSError as e:
                print(f"connect: refused ({e.strerror})")
        else:
            print(f"relay: {text.upper()}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
