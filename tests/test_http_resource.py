"""HTTP resources through the broker, against a real HTTP server on 127.0.0.1.

The agent names paths under the resource's URL prefix; the parent adds the secret header
from its own environment (the agent never has it), enforces the method rights, the prefix
(also across redirects), the size cap and the timeout, and keeps its event loop serving
while a request is pending.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.policy.model import Resource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_broker import RAW_PRELUDE, dir_resource, make_policy, run_agent

SECRET = "Bearer s3cret-value-never-in-the-agent"


class Server:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": body.decode(),
                    }
                )
                route = self.path.split("?")[0]
                if route == "/api/wait":
                    server.release.wait(20)
                if route == "/api/release":
                    server.release.set()
                if route == "/api/slow":
                    server.release.wait(20)  # far beyond the resource timeout
                if route == "/api/redirect-out":
                    self._send(302, b"", {"Location": "/elsewhere/x"})
                    return
                if route == "/api/redirect-host":
                    self._send(302, b"", {"Location": "http://localhost:1/api/echo"})
                    return
                if route == "/api/redirect-in":
                    self._send(302, b"", {"Location": "/api/echo?from=redirect"})
                    return
                if route == "/api/drip":  # headers at once, then a byte now and then
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    for _ in range(100):
                        if server.release.wait(0.2):
                            break
                        self.wfile.write(b"d")
                        self.wfile.flush()
                    return
                if route == "/api/drip-headers":  # the status line and headers a byte at a time
                    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 150 + b"\r\n\r\n"
                    for byte in head:
                        if server.release.wait(0.2):
                            return
                        try:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                        except OSError:  # the client gave up (a timeout being tested)
                            return
                    return
                if route == "/api/big":
                    self._send(200, b"x" * 5000)
                    return
                if route == "/api/missing":
                    self._send(404, b"no such thing")
                    return
                reply = {"method": self.command, "path": self.path, "body": body.decode()}
                self._send(200, json.dumps(reply).encode(), {"X-Reply": "yes"})

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def api(server: Server, **kw: Any) -> dict[str, Resource]:
    fields: dict[str, Any] = {
        "url": f"http://127.0.0.1:{server.port}/api/",
        "headers": {"Authorization": "env:TEST_API_KEY"},
        "timeout": 1.0,
        "max_bytes": 1000,
    }
    fields.update(kw)
    return {"api": Resource(name="api", type="http", **fields)}


ENV = {"TEST_API_KEY": SECRET}


def test_get_adds_the_secret_the_agent_never_sees(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:get",), api(server)),
        """
        r = parent.http("api", "GET", "echo?q=1", headers={"X-Trace": "t1"})
        out["status"] = r.status
        out["body"] = json.loads(r.body)
        out["x_reply"] = r.header("x-reply")
        out["env"] = sorted(os.environ)
        out["all"] = repr(r)
        attempt("missing", lambda: parent.http("api", "GET", "missing").status)
        """,
        environ=ENV,
    )
    o = run.out
    assert o["status"] == 200 and o["body"]["path"] == "/api/echo?q=1"
    assert o["x_reply"] == "yes" and o["missing"] == ["ok", 404]
    assert "TEST_API_KEY" not in o["env"] and "s3cret" not in o["all"]
    assert server.seen[0]["headers"]["Authorization"] == SECRET
    assert server.seen[0]["headers"]["X-Trace"] == "t1"
    rec = run.records(op="http", decision="allow")
    assert rec[0]["url"] == f"http://127.0.0.1:{server.port}/api/echo?q=1"
    assert rec[0]["reason"] == "api:get promised"
    assert "s3cret" not in run.log.read_text()


def test_each_method_needs_its_right(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:get", "api:put"), api(server)),
        """
        for m in ("POST", "PATCH", "DELETE", "HEAD"):
            attempt(m, lambda: parent.http("api", m, "echo", body=b"data"))
        attempt("PUT", lambda: json.loads(parent.http("api", "PUT", "echo", body="up").body))
        """,
        environ=ENV,
    )
    for m in ("post", "patch", "delete", "head"):
        assert run.out[m.upper()] == ["PermissionError", f"api:{m} is not promised"]
    assert run.out["PUT"][1]["body"] == "up"
    assert [s["method"] for s in server.seen] == ["PUT"]
    assert len(run.records(op="http", decision="deny")) == 4


def test_post_with_right_sends_the_body(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:post",), api(server)),
        """
        attempt("post", lambda: json.loads(parent.http("api", "POST", "echo", body=b"hi").body))
        attempt("big_body", lambda: parent.http("api", "POST", "echo", body=b"x" * 70000))
        """,
        environ=ENV,
    )
    assert run.out["post"] == ["ok", {"method": "POST", "path": "/api/echo", "body": "hi"}]
    assert run.out["big_body"][0] in ("ValueError", "WireError")
    assert len(server.seen) == 1


def test_urls_stay_beneath_the_prefix(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:get",), api(server)),
        """
        cases = ["../elsewhere", "echo/../../elsewhere", "%2e%2e/elsewhere", "/abs",
                 "//evil.example/x", "http://evil.example/", "https:x", "echo\\r\\nX: y",
                 "echo\\x00", "echo#frag", "a\\\\b"]
        for i, p in enumerate(cases):
            attempt(str(i), lambda: parent.http("api", "GET", p))
        attempt("host", lambda: parent.http("api", "GET", "echo", headers={"Host": "evil"}))
        attempt("override", lambda: parent.http("api", "GET", "echo",
                                                headers={"authorization": "mine"}))
        attempt("inside_dots", lambda: parent.http("api", "GET", "a/../echo").status)
        """,
        environ=ENV,
    )
    for i in range(11):
        assert run.out[str(i)][0] == "PermissionError", (i, run.out[str(i)])
    assert run.out["host"][0] == "PermissionError" and run.out["override"][0] == "PermissionError"
    assert run.out["inside_dots"] == ["ok", 200]
    assert len(server.seen) == 1
    assert len(run.records(op="http", decision="deny")) == 13


def test_redirects_only_within_the_prefix(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:get",), api(server)),
        """
        attempt("out", lambda: parent.http("api", "GET", "redirect-out"))
        attempt("host", lambda: parent.http("api", "GET", "redirect-host"))
        attempt("in", lambda: json.loads(parent.http("api", "GET", "redirect-in").body)["path"])
        """,
        environ=ENV,
    )
    assert run.out["out"][0] == "PermissionError" and "leaves" in run.out["out"][1]
    assert run.out["host"][0] == "PermissionError"
    assert run.out["in"] == ["ok", "/api/echo?from=redirect"]
    assert "/elsewhere/x" not in [s["path"] for s in server.seen]
    denied = run.records(op="http", decision="deny")
    assert len(denied) == 2 and all("redirect" in r["reason"] for r in denied)


def test_response_size_cap_and_timeout(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:get",), api(server)),
        """
        attempt("big", lambda: parent.http("api", "GET", "big"))
        attempt("slow", lambda: parent.http("api", "GET", "slow"))
        attempt("drip", lambda: parent.http("api", "GET", "drip"))
        """,
        environ=ENV,
    )
    assert run.out["drip"][0] == "TimeoutError"
    assert run.out["big"] == ["ValueError", "response larger than 1000 bytes"]
    assert run.out["slow"][0] == "TimeoutError"


def test_missing_secret_sends_nothing(tmp_path: Path, server: Server) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("api:get",), api(server)),
        'attempt("get", lambda: parent.http("api", "GET", "echo"))',
        environ={},
    )
    assert run.out["get"][0] == "PermissionError" and "TEST_API_KEY" in run.out["get"][1]
    assert server.seen == []
    assert run.records(op="http", decision="deny")


def test_loop_serves_while_http_pending(tmp_path: Path, server: Server) -> None:
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "a.txt").write_text("alpha")
    res = {**api(server, timeout=30.0), **dir_resource(vault)}
    run = run_agent(
        tmp_path,
        make_policy(("api:get", "vault:read"), res),
        """
        wire.send(raw, {"id": 1, "op": "http", "resource": "api", "method": "GET", "path": "wait"})
        wire.send(raw, {"id": 2, "op": "stat", "resource": "vault", "path": "a.txt"})
        first, _ = wire.recv(raw, reply=True)  # the dir reply, while the HTTP one waits
        wire.send(raw, {"id": 3, "op": "http", "resource": "api", "method": "GET",
                        "path": "release"})
        rest = []
        for _ in range(2):
            reply, fd = wire.recv(raw, reply=True)
            if fd is not None:
                os.close(fd)
            rest.append(reply["id"])
        out["first"] = first["id"]
        out["rest"] = sorted(rest)
        """,
        environ=ENV,
        prelude=RAW_PRELUDE,
    )
    assert run.out["first"] == 2 and run.out["rest"] == [1, 3]


def test_pending_http_requests_are_bounded(tmp_path: Path, server: Server) -> None:
    from sandbox.parent.broker import MAX_HTTP_PENDING

    run = run_agent(
        tmp_path,
        make_policy(("api:get",), api(server, timeout=30.0)),
        f"""
        n = {MAX_HTTP_PENDING}
        for i in range(1, n + 2):
            wire.send(raw, {{"id": i, "op": "http", "resource": "api", "method": "GET",
                            "path": "wait"}})
        refused, _ = wire.recv(raw, reply=True)
        out["refused"] = [refused["id"], refused["error"], refused["message"]]
        os.write(1, b"refused\\n")  # the test releases the server now
        ids = []
        for _ in range(n):
            reply, fd = wire.recv(raw, reply=True)
            if fd is not None:
                os.close(fd)
            ids.append(reply["id"])
        out["served"] = sorted(ids)
        """,
        environ=ENV,
        prelude=RAW_PRELUDE,
        on_line=lambda line: server.release.set() if line == "refused" else None,
    )
    assert run.out["refused"][:2] == [MAX_HTTP_PENDING + 1, "PermissionError"]
    assert "too many" in run.out["refused"][2]
    assert run.out["served"] == list(range(1, MAX_HTTP_PENDING + 1))


def test_agent_environment_has_no_secret(tmp_path: Path, server: Server) -> None:
    os.environ["TEST_API_KEY_PARENT_ONLY"] = "x"
    try:
        run = run_agent(
            tmp_path,
            make_policy(("api:get",), api(server)),
            'out["env"] = sorted(os.environ)',
            environ=ENV,
        )
    finally:
        del os.environ["TEST_API_KEY_PARENT_ONLY"]
    assert "TEST_API_KEY_PARENT_ONLY" not in run.out["env"]
