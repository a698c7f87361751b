"""The action agent: runs one declared tool, and the tool runs with fewer powers still.

Role: count the lines of the notes with /usr/bin/wc.
Powers: exec (only programs unveiled 'x': wc), proc (to fork); the tool runs under the
execpromises 'stdio rpath': it can read, it cannot write, fork or exec anything itself.
"""

from __future__ import annotations

import os
import subprocess
import sys

import sandbox

TOOL = "/usr/bin/wc"


def main() -> int:
    notes = os.path.abspath(sys.argv[1])
    sandbox.unveil(TOOL, "rx")
    sandbox.unveil("/usr/lib", "rx")  # the tool's loader (exec needs x) and libraries
    sandbox.unveil("/etc/ld.so.cache", "r")
    sandbox.unveil(notes, "r")
    sandbox.pledge("stdio rpath proc exec", "stdio rpath")
    files = sorted(os.path.join(notes, n) for n in os.listdir(notes))
    out = subprocess.run([TOOL, "-l", *files], capture_output=True, text=True, check=False)
    print(out.stdout, end="")
    for other in ("/bin/sh", "/usr/bin/curl"):
        try:
            subprocess.run([other, "-c", "true"], check=False)
            print(f"run {other}: allowed?!")
        except OSError as e:
            print(f"run {other}: refused ({e.strerror})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
