"""The policy format's vocabulary: allowed keys and values, and the JSON Schema made from them.

The tables below are the single source of truth: the loader (sandbox.policy.loader)
refuses what they do not list, and `schema()` (shipped as sandbox/policy/schema.json, for
editors) is generated from them; a test fails if the two drift. Promise names come from
the promise table itself, permission letters from the Landlock rights table.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.plain import plain
from sandbox.policy.model import (
    PERM_LETTERS,
    RESOURCE_RIGHTS,
    LockMode,
    Qos,
    SyncMode,
    ViolationMode,
)


@functools.cache
def promise_names() -> frozenset[str]:
    """The known promise names (sandbox.enforce.promises.PROMISE_NAMES, imported on use:
    the table costs milliseconds that `sandbox run -p ...` without a file need not pay)."""
    from sandbox.enforce.promises import PROMISE_NAMES

    return PROMISE_NAMES


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest choice, or ''."""
    import difflib  # error path only

    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


MAX_POLICY_BYTES = 1024 * 1024
# Policies are shallow (4 levels at most); a deep tree is an attack on the parser.
MAX_DEPTH = 16
MAX_INT = 2**31 - 1

LOCK_MODES: tuple[LockMode, ...] = ("exec", "agent")
VIOLATION_MODES: tuple[ViolationMode, ...] = ("kill", "errno", "log")
QOS_LEVELS: tuple[Qos, ...] = ("interactive", "initiated", "utility", "background")
RESOURCE_TYPES = tuple(RESOURCE_RIGHTS)
SYNC_MODES: tuple[SyncMode, ...] = ("durable", "batch")
# A batch window is how much a power loss may take: bounded (sandbox.parent.audit.MAX_WINDOW).
MAX_AUDIT_WINDOW = 1.0  # seconds

NAME_RE = re.compile(r"[a-z][a-z0-9-]*")
RESOURCE_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


# --- The tables: allowed keys, their JSON Schema, and what they mean ----------------------


@plain(frozen=True)
class Field:
    """One allowed key: the JSON Schema of its value, a one-line description, required?"""

    schema: Mapping[str, Any]
    doc: str
    required: bool = False


def _ref(name: str) -> Mapping[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


def _object(table: Mapping[str, Field]) -> dict[str, Any]:
    """JSON Schema of a mapping whose keys are exactly those of `table`."""
    out: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {key: {**f.schema, "description": f.doc} for key, f in table.items()},
    }
    required = [key for key, f in table.items() if f.required]
    if required:
        out["required"] = required
    return out


_STRING = {"type": "string"}
_POSITIVE_INT = {"type": "integer", "minimum": 1, "maximum": MAX_INT}

INIT_KEYS: Mapping[str, Field] = {
    "timeout": Field(_ref("duration"), "time the agent has to lock (lock: agent); default 10s"),
    "pledge": Field(_ref("promises"), "promises allowed before the agent locks"),
}

NETWORK_KEYS: Mapping[str, Field] = {
    "connect": Field(
        {"type": "array", "items": _ref("port")}, "TCP ports the agent may connect to"
    ),
    "bind": Field({"type": "array", "items": _ref("port")}, "TCP ports the agent may bind"),
}

UNVEIL_ENTRY_KEYS: Mapping[str, Field] = {
    "perms": Field(_ref("perms"), "permissions, any of r w x c", required=True),
    "optional": Field({"type": "boolean"}, "a missing path is not an error"),
}

DIR_RESOURCE_KEYS: Mapping[str, Field] = {
    "type": Field({"const": "dir"}, "a directory the parent opens for the agent", required=True),
    "path": Field(_STRING, "the directory, relative to the policy file", required=True),
}

HTTP_RESOURCE_KEYS: Mapping[str, Field] = {
    "type": Field({"const": "http"}, "an HTTP(S) service the parent calls", required=True),
    "url": Field(
        {"type": "string", "pattern": "^https?://[^/?#]+"},
        "URL prefix (scheme, host and port are pinned)",
        required=True,
    ),
    "headers": Field(
        {"type": "object", "additionalProperties": {"type": "string"}},
        "headers the parent adds; a value 'env:NAME' is read from the parent's environment",
    ),
    "timeout": Field(_ref("duration"), "per-request timeout; default 10s"),
    "max_bytes": Field(_ref("size"), "response size cap; default 16MiB"),
}

AGENT_RESOURCE_KEYS: Mapping[str, Field] = {
    "type": Field(
        {"const": "agent"},
        "another agent of the system, named by this key; NAME:send sends it messages",
        required=True,
    ),
}

RESOURCE_KEYS: Mapping[str, Mapping[str, Field]] = {
    "dir": DIR_RESOURCE_KEYS,
    "http": HTTP_RESOURCE_KEYS,
    "agent": AGENT_RESOURCE_KEYS,
}

LIMIT_KEYS: Mapping[str, Field] = {
    "memory": Field(_ref("size"), "memory of the whole process tree"),
    "cpu": Field(_ref("duration"), "CPU time per process (RLIMIT_CPU), whole seconds"),
    "wall": Field(_ref("duration"), "wall-clock time of the whole run"),
    "processes": Field(_POSITIVE_INT, "processes in the whole tree"),
    "files": Field(_POSITIVE_INT, "open files per process (RLIMIT_NOFILE)"),
    "file_size": Field(_ref("size"), "largest file a process may write (RLIMIT_FSIZE)"),
}

AUDIT_KEYS: Mapping[str, Field] = {
    "sync": Field(
        {"enum": list(SYNC_MODES)},
        "durable (default): every record synced before it is acknowledged; batch: op "
        "records acknowledged once written, synced within the window",
    ),
    "window": Field(
        _ref("duration"),
        "batch only: the longest an acknowledged op record waits for its sync; default 2ms, "
        "at most 1s",
    ),
}

PARAM_KEYS: Mapping[str, Field] = {
    "default": Field(_STRING, "the value when --set does not give one; may use ${CWD}, ${HOME}"),
    "doc": Field(_STRING, "what the parameter means, for `sandbox presets`"),
}

ENV_KEYS: Mapping[str, Field] = {
    "keep": Field(
        {"type": "array", "items": _ref("env_name")},
        "variables passed from the launcher's environment; default PATH LANG TERM HOME TZ",
    ),
    "set": Field(
        {
            "type": "object",
            "propertyNames": _ref("env_name"),
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "variables set for the agent",
    ),
}

TOP_LEVEL_KEYS: Mapping[str, Field] = {
    "version": Field({"const": 1}, "format version, must be 1", required=True),
    "name": Field(
        {"type": "string", "pattern": f"^{NAME_RE.pattern}$"},
        "agent name; default: the file's stem",
    ),
    "command": Field(
        {"oneOf": [_STRING, {"type": "array", "items": {"type": ["string", "number"]}}]},
        "the program and its arguments (a string is split as by a shell)",
    ),
    "lock": Field({"enum": list(LOCK_MODES)}, "when pledge and unveil are enforced"),
    "init": Field(_object(INIT_KEYS), "bounds before the agent locks (lock: agent only)"),
    "pledge": Field(_ref("promises"), "promises, including capability promises RESOURCE:RIGHT"),
    "execpromises": Field(_ref("promises"), "promises of programs the agent execs; needs 'exec'"),
    "unveil": Field(
        {
            "type": "object",
            "additionalProperties": {"oneOf": [_ref("perms"), _object(UNVEIL_ENTRY_KEYS)]},
        },
        "path: permissions (r w x c); relative paths are relative to the policy file",
    ),
    "network": Field(_object(NETWORK_KEYS), "Landlock TCP rules; needs promise 'inet'"),
    "resources": Field(
        {
            "type": "object",
            "propertyNames": {"pattern": f"^{RESOURCE_NAME_RE.pattern}$"},
            "additionalProperties": {"oneOf": [_object(table) for table in RESOURCE_KEYS.values()]},
        },
        "what capability promises refer to",
    ),
    "limits": Field(_object(LIMIT_KEYS), "resource limits"),
    "env": Field(_object(ENV_KEYS), "the agent's environment"),
    "violation": Field({"enum": list(VIOLATION_MODES)}, "what a violation does; default kill"),
    "qos": Field({"enum": list(QOS_LEVELS)}, "scheduling class"),
    "best_effort": Field({"type": "boolean"}, "start even if the kernel cannot enforce all"),
    "user": Field(
        {"type": ["string", "integer"]}, "run the agent as this user (name or numeric uid)"
    ),
    "params": Field(
        {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Z][A-Z0-9_]*$"},
            "additionalProperties": {"oneOf": [_STRING, _object(PARAM_KEYS)]},
        },
        "parameters used as ${NAME} in paths and the command; set with --set NAME=VALUE "
        "(a string value is the doc, with no default)",
    ),
    "audit": Field(_object(AUDIT_KEYS), "how the audit log makes its records durable"),
}


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the policy format, generated from the tables."""
    from sandbox.policy import units  # parsed policies only: Decimal costs the -p/-v path

    word = "(?:" + "|".join(sorted(promise_names())) + f"|{RESOURCE_NAME_RE.pattern}:[a-z]+)"
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://outheis.org/sandbox/policy.schema.json",
        "title": "outheis-sandbox policy",
    }
    out.update(_object(TOP_LEVEL_KEYS))
    out["$defs"] = {
        "promises": {
            "oneOf": [
                {"type": "string", "pattern": rf"^\s*(?:{word}(?:\s+{word})*)?\s*$"},
                {"type": "array", "items": {"type": "string", "pattern": f"^{word}$"}},
            ]
        },
        "perms": {"type": "string", "pattern": f"^[{PERM_LETTERS}]*$"},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "size": {
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": units.SIZE_PATTERN},
            ]
        },
        "duration": {
            "oneOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": units.DURATION_PATTERN},
            ]
        },
        "env_name": {"type": "string", "pattern": f"^{ENV_NAME_RE.pattern}$"},
    }
    return out
