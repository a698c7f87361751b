"""Policy parameters: `${WORK}` in a path, set with `--set WORK=DIR`.

A policy declares the parameters it takes (`params: {WORK: {default: "${CWD}", doc: ...}}`)
and uses them in paths (unveil keys, resource paths) and in its command. Two are built in:
`CWD`, the directory `sandbox` was started in, and `HOME`, the launcher's home directory.
Values are paths: a relative value given with `--set` is made absolute against the current
directory (so `--set WORK=.` means here, not the directory of the policy file).

Only `${NAME}` is special; a `$` not followed by `{` is an ordinary character. Expansion is
one pass: a value containing `${...}` is not expanded again, so a value cannot smuggle in
another parameter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from sandbox.errors import UsageError

NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
MAX_VALUE = 4096  # PATH_MAX: a longer value cannot be a path anyway
MAX_NAME = 64

# Built in, never declared, never set: what they mean is fixed.
BUILTINS: Mapping[str, str] = {
    "CWD": "the directory sandbox was started in",
    "HOME": "the home directory of the user running sandbox ($HOME)",
}


class ParamError(ValueError):
    """A malformed reference or value; the message says what is wrong."""


def builtin_values(
    cwd: str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    return {"CWD": cwd if cwd is not None else os.getcwd(), "HOME": home}


def check_value(name: str, value: str) -> str | None:
    """Why `value` cannot be the value of parameter `name`, or None."""
    if value == "":
        return f"parameter {name} has an empty value"
    if "\0" in value:
        return f"the value of parameter {name} contains a NUL character"
    if len(value) > MAX_VALUE:
        return f"the value of parameter {name} is longer than {MAX_VALUE} characters"
    return None


def check_name(name: str) -> str | None:
    """Why `name` cannot name a parameter, or None."""
    if len(name) > MAX_NAME or not NAME_RE.fullmatch(name):
        return f"'{name[:MAX_NAME]}' is not a parameter name: use [A-Z][A-Z0-9_]*, e.g. WORK"
    return None


def parse_set(spec: str, cwd: str | None = None) -> tuple[str, str]:
    """`--set NAME=VALUE` -> (NAME, absolute VALUE); UsageError (exit 2) if malformed."""
    name, eq, value = spec.partition("=")
    if not eq:
        raise UsageError(f"--set '{spec[:80]}': expected NAME=VALUE, e.g. --set WORK=.")
    problem = check_name(name)
    if problem is None and name in BUILTINS:
        problem = f"{name} is built in ({BUILTINS[name]}) and cannot be set"
    problem = problem or check_value(name, value)
    if problem is not None:
        raise UsageError(f"--set: {problem}")
    base = cwd if cwd is not None else os.getcwd()
    return name, os.path.normpath(os.path.join(base, value))


def parse_sets(specs: list[str], cwd: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, value = parse_set(spec, cwd)
        if name in out:
            raise UsageError(f"--set: parameter {name} is given twice")
        out[name] = value
    return out


_REF = re.compile(r"\$\{")


def references(text: str) -> list[str]:
    """The parameter names `text` refers to, in order; ParamError if a reference is
    malformed (no closing brace, not a name)."""
    names: list[str] = []
    pos = 0
    while (m := _REF.search(text, pos)) is not None:
        end = text.find("}", m.end())
        if end < 0:
            raise ParamError(f"'${{' without a closing '}}' in '{text[:200]}'")
        name = text[m.end() : end]
        problem = check_name(name)
        if problem is not None:
            raise ParamError(problem)
        names.append(name)
        pos = end + 1
    return names


def expand(text: str, values: Mapping[str, str]) -> str:
    """`text` with every `${NAME}` replaced by its value (one pass); ParamError for a
    malformed reference or a name without a value."""
    if "${" not in text:
        return text
    names = references(text)
    missing = [n for n in dict.fromkeys(names) if n not in values]
    if missing:
        known = ", ".join(sorted(values)) or "none"
        raise ParamError(
            f"unknown parameter {', '.join(missing)} (known: {known}; declare it under 'params')"
        )
    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)\}", lambda m: values[m.group(1)], text)
