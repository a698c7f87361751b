"""The pattern agent: reads the vault, writes insights, and nothing else.

Role: count the words of every note and write a summary into the insights directory.
Powers: read the vault (unveil r), create and write files in insights (unveil rwc); no
network, no exec, cannot change the vault.

With --bus (policies/outheis/pattern.yaml, qos background): outheis's "rumi". It reads
the vault through the parent (vault:read) and is the only writer of insights
(insights:write): once at start, and on every request (`insights` from the user).
"""

from __future__ import annotations

import collections
import heapq  # noqa: F401  # Counter.most_common imports it lazily; after the lock it could not
import os
import re
import sys

import sandbox


def count(texts: list[str]) -> str:
    words: collections.Counter[str] = collections.Counter()
    for text in texts:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{4,}", text))
    lines = ["# Most frequent words"] + [f"- {w}: {n}" for w, n in words.most_common(5)]
    return "\n".join(lines) + "\n"


def bus_main() -> int:
    bus = sandbox.connect()
    sandbox.pledge("stdio vault:read vault:list insights:read insights:write insights:create")

    def analyse() -> str:
        names = [e.name for e in bus.list("vault", "notes")]
        summary = count([bus.read("vault", f"notes/{n}").decode() for n in names])
        bus.write("insights", "summary.md", summary)
        return f"insights/summary.md: {len(names)} notes\n{summary}"

    analyse()
    while True:
        msg = bus.recv()
        if msg is None:
            continue
        if msg["type"] == "request":
            bus.reply(msg, {"text": analyse()})
        bus.ack(msg)


def main() -> int:
    if "--bus" in sys.argv:
        return bus_main()
    vault, insights = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    sandbox.unveil(vault, "r")
    sandbox.unveil(insights, "rwc")
    sandbox.pledge("stdio rpath wpath cpath")

    words: collections.Counter[str] = collections.Counter()
    for root, _dirs, files in os.walk(vault):
        for name in sorted(files):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                words.update(w.lower() for w in re.findall(r"[A-Za-z]{4,}", f.read()))
    summary = os.path.join(insights, "summary.md")
    with open(summary, "w", encoding="utf-8") as f:
        f.write("# Most frequent words\n")
        for word, n in words.most_common(5):
            f.write(f"- {word}: {n}\n")
    print(f"wrote {summary}")

    # What a tricked pattern agent might try next; each is refused by the kernel.
    for attempt, path in (
        ("overwrite a note", os.path.join(vault, "notes", "today.md")),
        ("read a secret", "/etc/shadow"),
    ):
        try:
            with open(path, "a" if attempt.startswith("over") else "r", encoding="utf-8"):
                print(f"{attempt}: allowed?!")
        except OSError as e:
            print(f"{attempt}: refused ({e.strerror})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
