"""The parent's side of the broker channel: check, record, then perform (privilege separation).

One Broker serves one agent. The launcher's event loop calls on_readable() when the
channel is readable. Each call reads a bounded batch of requests without blocking and:

1. decides each one against the policy's capability promises (and early path/URL checks),
2. appends one `op` audit record per request, then commits ONCE for the batch (group
   commit: one fdatasync however many requests were pipelined),
3. only then performs the allowed operations and replies (write-ahead: the record is
   durable before the effect reaches the agent).

Nothing the agent sends can crash, block or grow the parent: frames are bounded, bad
frames get error replies, descriptors on requests that take none are closed, a flood of
bad frames closes the channel, replies are sent with MSG_DONTWAIT and an agent that does
not read them loses the channel. HTTP requests run in a small thread pool with a bound on
how many may be pending, so the loop keeps serving while a server is slow.

No exception leaves a request: where the broker plans, performs or hands a request to a
registered handler, anything unexpected becomes an error reply and an `error` record, and
the next request is served (the event loop guards the broker as a whole as well). Denied
requests are recorded through the agent's rate limiter (sandbox.parent.ratelimit), so a
flood of refusals cannot fill the disk; allowed ones are always recorded, write-ahead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sandbox import wire
from sandbox.parent import resources
from sandbox.parent.audit import AuditError, AuditLog, record_error
from sandbox.parent.ratelimit import RateLimiter, op_key
from sandbox.policy.model import Policy, Resource
from sandbox.protocol import DEFAULT_ERROR, ERROR_NAMES, OPS, Op, Phase, missing_field

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.parent import httpres

MAX_BATCH = 128  # requests read per on_readable() call; the loop calls again if more wait
ABUSE_LIMIT = 64  # consecutive malformed frames / unknown ops before the channel is closed
HTTP_WORKERS = 4
MAX_HTTP_PENDING = 16  # running + queued; more are refused
SEND_BUFFER = 1 << 20  # bytes
MAX_FIELD = 256  # characters of an agent-chosen op name kept in a record

Reply = tuple[dict[str, Any], int | None]
# A handler the lead registers (e.g. "lock"): gets the request and the descriptor that came
# with it (it then owns that descriptor, on every path: it must close it even when it
# raises), returns the reply fields and an optional descriptor to send (the broker closes
# its copy after sending), or None when it replies later through reply() (the
# dispatcher's recv waits for a message; its send for the log). An exception becomes an
# error reply and an `error` record.
Handler = Callable[[dict[str, Any], int | None], Reply | None]


class Denied(PermissionError):
    """A request refused by policy: recorded with decision 'deny'."""


class _Job:
    """One request of a batch, from decision to reply. (A plain class with slots: one is
    made per request, and a dataclass's __init__ costs twice as much.)"""

    __slots__ = ("fd", "handler", "http", "id", "record", "reply", "request", "run")

    def __init__(
        self,
        id: int,
        fd: int | None = None,
        reply: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
        run: Callable[[], Reply] | None = None,
        http: httpres.Prepared | None = None,
        handler: Handler | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.fd = fd  # received with the request; closed unless a handler takes it
        self.reply = reply  # decided already (error / denial)
        self.record = record  # op record fields
        self.run = run  # a synchronous operation, after the commit
        self.http = http  # an HTTP request, for the pool
        self.handler = handler  # a registered op
        self.request: dict[str, Any] = {} if request is None else request


# Operations by their wire name: a dict lookup instead of the enum's constructor.
_OP_NAMES: Mapping[str, Op] = {op.value: op for op in Op}


def error_reply(ident: int, exc: BaseException | str, name: str | None = None) -> dict[str, Any]:
    if isinstance(exc, BaseException):
        name = name or type(exc).__name__
        message = str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            message = exc.strerror + (f": {exc.filename!r}" if exc.filename else "")
    else:
        message = exc
    if name not in ERROR_NAMES:
        name = _ERROR_BASES.get(name or "", DEFAULT_ERROR)
    return {"id": ident, "ok": False, "error": name, "message": message}


# Our own exception classes, sent as the builtin the client knows.
_ERROR_BASES = {
    "Denied": "PermissionError",
    "Refused": "PermissionError",
    "HttpRefused": "PermissionError",
    "PathError": "ValueError",
    "HttpError": "ValueError",
    "WireError": "ValueError",
    "ConnectionRefusedError": "ConnectionError",
    "ConnectionResetError": "ConnectionError",
}


def _internal(error: Exception) -> str:
    return f"internal error: {type(error).__name__}: {error}"


def _str_field(req: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = req.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"request field {name!r} must be a string")
    return value


def _clip(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD] + "..."


class Broker:
    """Serves one agent's requests on `sock` (the parent's end of the socketpair)."""

    def __init__(
        self,
        sock: socket.socket,
        policy: Policy,
        audit: AuditLog,
        agent_pid: int,
        environ: Mapping[str, str],
        limiter: RateLimiter | None = None,
    ) -> None:
        sock.setblocking(False)
        # Room for the replies of a pipelining agent (capped by net.core.wmem_max); an agent
        # that still lets it fill loses the channel (see _send).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._sock = sock
        self._fileno = sock.fileno()
        self.policy = policy
        self.audit = audit
        self.pid = agent_pid
        self.limiter = limiter if limiter is not None else RateLimiter(audit, agent_pid)
        self._environ = dict(environ)
        self._resources = dict(policy.resources)  # a dict: faster to look up than the proxy
        self._dirs = {
            name: resources.DirResource(name, r.path or "")
            for name, r in policy.resources.items()
            if r.type == "dir"
        }
        self._ops: dict[Op, Callable[[dict[str, Any]], _Job]] = {
            Op.OPEN: self._plan_open,
            Op.LIST: self._plan_list,
            Op.STAT: self._plan_stat,
            Op.REMOVE: self._plan_remove,
            Op.RENAME: self._plan_rename,
            Op.MKDIR: self._plan_mkdir,
            Op.HTTP: self._plan_http,
        }
        assert set(self._ops) == {op for op, s in OPS.items() if s.phase is Phase.REQUEST}
        self._handlers: dict[Op, Handler] = {}
        self._reasons: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple[bool, str]] = {}
        self._abuse = 0
        self._send_lock = threading.Lock()  # every send and the close
        self._state_lock = threading.Lock()
        self._http_pending = 0
        self._pool: ThreadPoolExecutor | None = None
        self._dead = False  # channel dropped or closed: stop serving

    # ------------------------------------------------------------------ public

    def fileno(self) -> int:
        return self._fileno

    def register(self, op: Op, handler: Handler) -> None:
        """Serve `op` (e.g. Op.LOCK) with `handler`, which records what it does itself."""
        if op in self._ops or op in self._handlers:
            raise ValueError(f"broker operation {op!r} exists already")
        self._handlers[op] = handler

    def reply(self, reply: dict[str, Any]) -> None:
        """Send a reply a handler deferred (it returned None); same rules as every reply."""
        self._send(reply)

    def close(self) -> None:
        """Stop serving: cancel queued HTTP requests, close the channel and resource roots."""
        self._dead = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._send_lock:
            self._sock.close()
        for d in self._dirs.values():
            d.close()

    def on_readable(self) -> bool:
        """Serve what the agent sent; False once the channel is closed (call close())."""
        if self._dead:
            return False
        jobs: list[_Job] = []
        alive = True
        for _ in range(MAX_BATCH):
            try:
                msg, fd = wire.recv(self._sock)
            except BlockingIOError:
                break
            except wire.ChannelClosed:
                alive = False
                break
            except wire.WireError as e:
                self._abuse += 1
                reply = error_reply(e.id or 0, f"malformed request: {e}", "ValueError")
                jobs.append(_Job(e.id or 0, reply=reply))
                continue
            except OSError:  # ECONNRESET and the like: the agent is gone
                alive = False
                break
            jobs.append(self._plan_guarded(msg, fd))
        if self._abuse >= ABUSE_LIMIT:
            for job in jobs:
                self._close_fd(job)
            self._drop(f"channel closed: abuse ({self._abuse} malformed requests in a row)")
            return False
        self._commit(jobs)
        follow_up: list[dict[str, Any]] = []
        for job in jobs:
            if self._dead:
                self._close_fd(job)
                continue
            self._perform(job, follow_up)
        if follow_up:
            self._record_after(follow_up)
        return alive and not self._dead

    # ------------------------------------------------------------------ decide

    def _plan_guarded(self, msg: dict[str, Any], fd: int | None) -> _Job:
        ident: int = msg["id"]
        op = _OP_NAMES.get(msg["op"])
        handler = self._handlers.get(op) if op is not None else None
        if handler is not None:
            # The descriptor goes to the handler's job, which closes it on every path.
            self._abuse = 0
            return _Job(ident, fd=fd, handler=handler, request=msg)
        if fd is not None:  # no built-in operation takes a descriptor
            os.close(fd)
        try:
            return self._plan(msg, op)
        except Exception as e:  # a planner bug: refuse this request, serve the next
            self._internal_error(f"broker {_clip(msg['op'])}", e)
            return _Job(ident, reply=error_reply(ident, _internal(e), "OSError"))

    def _internal_error(self, where: str, error: Exception) -> None:
        if self.limiter.admit(f"error {where} {type(error).__name__}"):
            record_error(self.audit, self.pid, where, error)

    def _plan(self, msg: dict[str, Any], op: Op | None) -> _Job:
        ident: int = msg["id"]
        planner = self._ops.get(op) if op is not None else None
        if op is None or planner is None:
            self._abuse += 1
            name = _clip(msg["op"])
            reason = f"unknown operation {name!r}"
            record = self._fields(name, msg, "deny", reason)
            return _Job(ident, reply=error_reply(ident, reason, "ValueError"), record=record)
        self._abuse = 0
        try:
            missing = missing_field(op, msg)
            if missing is not None:
                raise ValueError(f"request field {missing!r} is missing")
            job = planner(msg)
        except (Denied, resources.PathError, PermissionError) as e:
            # Path and URL refusals (httpres.HttpRefused is a PermissionError) are escapes or
            # attempts at them: PermissionError too. httpres is not imported here: most
            # agents make no HTTP request, and urllib costs every launch.
            reply = error_reply(ident, str(e), "PermissionError")
            return _Job(ident, reply=reply, record=self._fields(op, msg, "deny", str(e)))
        except ValueError as e:
            record = self._fields(op, msg, "deny", str(e))
            return _Job(ident, reply=error_reply(ident, e), record=record)
        job.id = ident
        job.request = msg
        return job

    def _fields(
        self, op: str, msg: Mapping[str, Any], decision: str, reason: str
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "pid": self.pid,
            "op": str(op),  # a plain str: the log encodes those without copying
            "resource": _clip(msg.get("resource", "")),
        }
        if op == Op.HTTP:
            fields["url"] = _clip(msg.get("url", msg.get("path", "")))
        elif op == Op.RENAME:
            fields["path"] = _clip(msg.get("src", ""))
            fields["dst"] = _clip(msg.get("dst", ""))
        else:
            fields["path"] = _clip(msg.get("path", ""))
        fields["decision"] = decision
        fields["reason"] = reason
        return fields

    def _resource(self, req: Mapping[str, Any], kind: str) -> Resource:
        name = _str_field(req, "resource")
        res = self._resources.get(name)
        if res is None:
            raise Denied(f"resource {_clip(name)!r} is not declared in the policy")
        if res.type != kind:
            raise Denied(f"resource {name!r} is a {res.type} resource, not {kind}")
        return res

    def _need(self, resource: str, *rights: str, any_of: tuple[str, ...] = ()) -> str:
        """The reason an allowed request is allowed, or Denied naming the missing promise.
        Remembered per question: the policy does not change while the broker serves it."""
        key = (resource, rights, any_of)
        known = self._reasons.get(key)
        if known is None:
            try:
                known = (True, self._decide(resource, rights, any_of))
            except Denied as e:
                known = (False, str(e))
            if len(self._reasons) < 4096:
                self._reasons[key] = known
        if not known[0]:
            raise Denied(known[1])
        return known[1]

    def _decide(self, resource: str, rights: tuple[str, ...], any_of: tuple[str, ...]) -> str:
        caps = self.policy.capabilities
        for right in rights:
            if (resource, right) not in caps:
                raise Denied(f"{resource}:{right} is not promised")
        if any_of and not any((resource, r) in caps for r in any_of):
            raise Denied(" or ".join(f"{resource}:{r}" for r in any_of) + " is not promised")
        granted = [*rights, *(r for r in any_of if (resource, r) in caps)]
        return " ".join(f"{resource}:{r}" for r in granted) + " promised"

    def _allow(
        self, op: str, msg: Mapping[str, Any], reason: str, run: Callable[[], Reply]
    ) -> _Job:
        return _Job(0, record=self._fields(op, msg, "allow", reason), run=run)

    def _plan_open(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "dir")
        path = _str_field(req, "path")
        mode = _str_field(req, "mode", "r")
        spec = resources.OPEN_MODES.get(mode)
        if spec is None:
            known = ", ".join(resources.OPEN_MODES)
            raise ValueError(f"open mode {_clip(mode)!r} unknown (one of {known})")
        parts = resources.check_path(path)
        reason = self._need(res.name, *sorted(spec.rights))
        want = req.get("create", True) is not False
        may = (res.name, "create") in self.policy.capabilities
        d = self._dirs[res.name]
        return self._allow(Op.OPEN, req, reason, lambda: ({}, d.open(path, mode, may, want, parts)))

    def _plan_list(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "dir")
        path = _str_field(req, "path", "")
        resources.check_path(path, allow_root=True)
        reason = self._need(res.name, "list")
        d = self._dirs[res.name]

        def run() -> Reply:
            entries, truncated = d.list(path)
            return {"entries": entries, "truncated": truncated}, None

        return self._allow(Op.LIST, req, reason, run)

    def _plan_stat(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "dir")
        path = _str_field(req, "path", "")
        resources.check_path(path, allow_root=True)
        reason = self._need(res.name, any_of=("read", "list"))
        d = self._dirs[res.name]
        return self._allow(Op.STAT, req, reason, lambda: (d.stat(path), None))

    def _plan_remove(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "dir")
        path = _str_field(req, "path")
        resources.check_path(path)
        reason = self._need(res.name, "delete")
        d = self._dirs[res.name]

        def run() -> Reply:
            d.remove(path)
            return {}, None

        return self._allow(Op.REMOVE, req, reason, run)

    def _plan_rename(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "dir")
        src, dst = _str_field(req, "src"), _str_field(req, "dst")
        resources.check_path(src)
        resources.check_path(dst)
        reason = self._need(res.name, "delete", "create")
        d = self._dirs[res.name]

        def run() -> Reply:
            d.rename(src, dst)
            return {}, None

        return self._allow(Op.RENAME, req, reason, run)

    def _plan_mkdir(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "dir")
        path = _str_field(req, "path")
        resources.check_path(path)
        reason = self._need(res.name, "create")
        d = self._dirs[res.name]

        def run() -> Reply:
            d.mkdir(path)
            return {}, None

        return self._allow(Op.MKDIR, req, reason, run)

    def _plan_http(self, req: dict[str, Any]) -> _Job:
        res = self._resource(req, "http")
        method = _str_field(req, "method", "GET").upper()
        from sandbox.parent import httpres

        if method not in httpres.METHODS:
            raise ValueError(f"http method unknown (one of {', '.join(sorted(httpres.METHODS))})")
        reason = self._need(res.name, method.lower())
        prepared = httpres.prepare(res, req, self._environ)  # may raise HttpRefused/HttpError
        req["url"] = prepared.url  # recorded as the URL really requested
        with self._state_lock:
            if self._http_pending >= MAX_HTTP_PENDING:
                raise Denied(f"too many HTTP requests pending ({MAX_HTTP_PENDING}); retry later")
            self._http_pending += 1
        return _Job(0, record=self._fields(Op.HTTP, req, "allow", reason), http=prepared)

    # ------------------------------------------------------------------ record

    def _commit(self, jobs: list[_Job]) -> None:
        """Append every record of the batch and commit once; on failure refuse the batch."""
        appended = False
        try:
            append = self.audit.append
            for job in jobs:
                record = job.record
                if record is None or (record["decision"] == "deny" and not self._admit(record)):
                    continue
                try:
                    append("op", **record)
                    appended = True
                except ValueError as e:  # a record that cannot be built: refuse that request
                    self._unreserve(job)
                    job.reply = error_reply(job.id, f"cannot record the request: {e}", "ValueError")
                    job.run = job.http = None
            if appended:
                self.audit.commit()
        except AuditError as e:
            for job in jobs:
                self._unreserve(job)
                self._close_fd(job)
                job.run = job.http = job.handler = None
                job.reply = error_reply(job.id, f"audit log unavailable: {e}", "OSError")

    def _admit(self, record: Mapping[str, Any]) -> bool:
        """Whether to write this op record: always for allowed requests (write-ahead),
        within the rate limit for denials (they change nothing, so counting is enough)."""
        if record.get("decision") != "deny":
            return True
        return self.limiter.admit(op_key(str(record.get("op")), str(record.get("resource"))))

    def _record_after(self, records: list[dict[str, Any]]) -> None:
        """Refusals found while performing (kernel said no): no effect, recorded after."""
        try:
            appended = False
            for fields in records:
                if self._admit(fields):
                    self.audit.append("op", **fields)
                    appended = True
            if appended:
                self.audit.commit()
        except (AuditError, ValueError):
            pass  # the refusal already happened; a broken log refuses the next batch

    def _unreserve(self, job: _Job) -> None:
        if job.http is not None:
            with self._state_lock:
                self._http_pending -= 1

    # ------------------------------------------------------------------ perform

    def _perform(self, job: _Job, follow_up: list[dict[str, Any]]) -> None:
        if job.reply is not None:
            self._close_fd(job)
            self._send(job.reply)
        elif job.http is not None:
            if self._pool is None:
                # Imported here: concurrent.futures pulls in logging, a cost every launch
                # would pay although most agents make no HTTP request.
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(HTTP_WORKERS, thread_name_prefix="broker-http")
            self._pool.submit(self._run_http, job.id, job.http, job.record or {})
        elif job.handler is not None:
            fd, job.fd, handler = job.fd, None, job.handler
            self._reply_from(job, lambda: handler(job.request, fd), "handler")
        elif job.run is not None:
            denial = self._reply_from(job, job.run, "broker")
            if denial is not None and job.record is not None:
                follow_up.append({**job.record, "decision": "deny", "reason": denial})

    def _reply_from(self, job: _Job, run: Callable[[], Reply | None], who: str) -> str | None:
        """Run an operation and send its reply; the reason if it was refused (to record).
        `who`: "broker" or "handler", for the error record (with the request's op)."""
        try:
            result = run()
            if result is None:  # a registered handler that replies later
                return None
            fields, fd = result
        except resources.Refused as e:
            self._send(error_reply(job.id, str(e), "PermissionError"))
            return str(e)
        except OSError as e:
            if e.errno in resources.ESCAPE_ERRNOS:
                why = (
                    f"path refused by the kernel ({errno.errorcode.get(e.errno or 0, '?')}): "
                    "symlinks, magic links and mount crossings are not followed"
                )
                self._send(error_reply(job.id, why, "PermissionError"))
                return why
            self._send(error_reply(job.id, e))
            return None
        except Exception as e:  # a handler bug must not take the parent down
            self._internal_error(_clip(f"{who} {job.request.get('op')}"), e)
            self._send(error_reply(job.id, _internal(e), "OSError"))
            return None
        try:
            if fields:
                self._send({**fields, "id": job.id, "ok": True}, fd)
            else:  # the usual reply (open, remove, ...): no encoder needed
                self._send_data(b'{"id":%d,"ok":true}' % job.id, fd)
        finally:
            if fd is not None:
                os.close(fd)
        return None

    def _run_http(self, ident: int, prepared: httpres.Prepared, record: dict[str, Any]) -> None:
        from sandbox.parent import httpres

        try:
            try:
                resp = httpres.perform(prepared)
            except httpres.HttpRefused as e:
                with contextlib.suppress(AuditError, ValueError):  # refused either way
                    self.audit.record("op", **{**record, "decision": "deny", "reason": str(e)})
                self._send(error_reply(ident, e))
                return
            except (OSError, ValueError) as e:
                self._send(error_reply(ident, e))
                return
            except Exception as e:  # http.client raises a zoo; none may kill the worker quietly
                self._send(error_reply(ident, f"HTTP request failed: {type(e).__name__}: {e}"))
                return
            try:
                reply = {
                    "id": ident,
                    "ok": True,
                    "status": resp.status,
                    "headers": resp.headers,
                    "length": resp.length,
                }
                self._send(reply, resp.memfd)
            finally:
                os.close(resp.memfd)
        finally:
            with self._state_lock:
                self._http_pending -= 1

    # ------------------------------------------------------------------ send

    def _send(self, reply: dict[str, Any], fd: int | None = None) -> None:
        """Send without blocking; an agent that does not read its replies loses the channel."""
        try:
            data = wire.encode(reply)
        except wire.WireError:
            instead = self._oversized(reply, fd)
            if instead is None:
                return
            data, fd = instead, None
        self._send_data(data, fd)

    def _send_data(self, data: bytes, fd: int | None) -> None:
        with self._send_lock:
            if self._dead:
                return
            try:
                wire.send_bytes(self._sock, data, fd, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._drop_locked("channel closed: the agent does not read its replies")
            except OSError:  # EPIPE/ECONNRESET: the agent is gone
                self._dead = True

    def _oversized(self, reply: dict[str, Any], fd: int | None) -> bytes | None:
        """A reply that does not fit a frame (a long listing): its JSON goes in a sealed
        memfd (sent here; None returned), or, with a descriptor of its own, or if it is not
        JSON data at all, a short error reply is returned to send instead."""
        ident = reply.get("id", 0)
        try:
            body_json = wire.json_bytes(reply) if fd is None else b""
        except wire.WireError as e:
            self._internal_error("broker reply", e)
            body_json = b""
        if not body_json:
            why = "reply too large" if fd is not None else "reply could not be encoded"
            return wire.encode(error_reply(ident, why, "OSError"))
        from sandbox.parent.httpres import sealed_memfd

        body = sealed_memfd(body_json)
        try:
            self._send({"id": ident, "ok": reply.get("ok", False), "memfd": True}, body)
        finally:
            os.close(body)
        return None

    def _drop(self, reason: str) -> None:
        with self._send_lock:
            self._drop_locked(reason)

    def _drop_locked(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        # Dropping the channel is the safe side whether or not it can be recorded.
        with contextlib.suppress(AuditError, ValueError):
            self.audit.record(
                "op",
                pid=self.pid,
                op="channel",
                resource="",
                path="",
                decision="deny",
                reason=reason,
            )
        # Shut down, not close: the loop still holds the fd number in its selector and
        # must see end-of-file, not a reused descriptor.
        with contextlib.suppress(OSError):  # already disconnected
            self._sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _close_fd(job: _Job) -> None:
        if job.fd is not None:
            os.close(job.fd)
            job.fd = None
