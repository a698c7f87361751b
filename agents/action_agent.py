"""The action agent: runs one declared tool, and the tool runs with fewer powers still.

Role: count the lines of the notes with /usr/bin/wc.
Powers: exec (only programs unveiled 'x': wc), proc (to fork); the tool runs under the
execpromises 'stdio rpath': it can read, it cannot write, fork or exec anything itself.

With --bus (policies/outheis/action.yaml): outheis's "hiro". A request {op: run, text:
TASK} runs the task of that name from its whitelist (TASKS) and replies with its output;
anything else is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

import sandbox

TOOL = "/usr/bin/wc"
TASKS = {"count-lines": ["-l"], "count-words": ["-w"]}  # the whitelist: task -> wc flags


def bus_main(notes: str) -> int:
    bus = sandbox.connect()
    sandbox.unveil(TOOL, "rx")
    sandbox.unveil("/usr/lib", "rx")
    sandbox.unveil("/etc/ld.so.cache", "r")
    sandbox.unveil(notes, "r")
    sandbox.pledge("stdio rpath proc exec", "stdio rpath")
    while True:
        msg = bus.recv()
        if msg is None:
            continue
        if msg["type"] == "request":
            task = str(msg["payload"].get("text", "")).strip()
            if task in TASKS:
                files = sorted(os.path.join(notes, n) for n in os.listdir(notes))
                out = subprocess.run(
                    [TOOL, *TASKS[task], *files], capture_output=True, text=True, check=False
                )
                text = out.stdout.replace(notes + "/", "")
            else:
                text = f"task {task!r} is not in the whitelist ({', '.join(TASKS)})"
            bus.reply(msg, {"text": text})
        bus.ack(msg)


def main() -> int:
    notes = os.path.abspath(sys.argv[1])
    if "--bus" in sys.argv:
        return bus_main(notes)
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
