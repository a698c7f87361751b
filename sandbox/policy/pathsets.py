"""Named sets of paths for unveil (`@python: rx`), so policies stay portable across hosts.

Where Python or the system libraries live differs between machines (a distribution's
/usr, pyenv under a home directory, a virtualenv); a policy that names them literally
would break on the next host, or be widened by hand to cover every guess.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def _python() -> list[str]:
    # The interpreter running the launcher is the one `python3` finds in the agent's PATH
    # when the launcher runs from a virtualenv; its prefixes hold the stdlib and packages.
    import sandbox

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(sandbox.__file__)))
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.join(pkg_parent, "sandbox"),  # an editable install lives outside the prefix
    ]
    return candidates


def _system() -> list[str]:
    return ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime"]


def _devices() -> list[str]:
    return ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]


PATH_SETS: dict[str, Callable[[], list[str]]] = {
    "@python": _python,
    "@system": _system,
    "@devices": _devices,
}


def expand(name: str) -> list[str] | None:
    """The existing paths of a named set (deduplicated, in order), None if unknown."""
    fn = PATH_SETS.get(name)
    if fn is None:
        return None
    out: list[str] = []
    for p in fn():
        p = os.path.normpath(p)
        if os.path.exists(p) and p not in out:
            out.append(p)
    return out
