"""The vocabulary of the promise table: system-call rules with argument conditions.

A Rule is pure data. sandbox.seccomp compiles rules into a BPF filter; sandbox.promises
holds the table. Nothing here touches the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CmpOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"]

# Placeholder for "the pid of the process that installs the filter", resolved at compile
# time. Sound only where the process cannot fork (the promise 'proc' is absent), because
# a forked child would inherit a filter naming its parent's pid.
SELF_PID = -1


@dataclass(frozen=True)
class Arg:
    """Condition on system-call argument `index` (0-5), as libseccomp's scmp_arg_cmp.

    masked_eq: (arg & mask) == value.
    """

    index: int
    op: CmpOp
    value: int
    mask: int = 0


# allow: the kernel lets the call through.
# enosys: the kernel fails it with ENOSYS (so libc falls back, e.g. clone3 -> clone).
# notify: the parent decides, by the named handler (sound only where the parent performs the
#         operation itself or the decision cannot race, see sandbox.handlers).
RuleAction = Literal["allow", "enosys", "notify"]


@dataclass(frozen=True)
class Rule:
    syscall: str
    args: tuple[Arg, ...] = ()
    action: RuleAction = "allow"
    handler: str | None = None  # for action "notify"
    # Other promises that must ALSO be pledged for this rule to apply (e.g. O_CREAT with
    # write access needs both 'cpath' and 'wpath').
    also: frozenset[str] = frozenset()
