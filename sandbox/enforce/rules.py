"""The vocabulary of the promise table, and its one evaluator.

A Rule is pure data: a system call, conditions on its arguments, and what happens when
they hold. sandbox.enforce.seccomp compiles rules into a BPF filter (libseccomp);
sandbox.enforce.promises holds the table. `match()` decides a call against a rule list
with the semantics of the compiled filter: the parent routes every user notification
with it, and the promise table words violation messages with it. Nothing here touches
the kernel.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal

from sandbox.plain import plain

CmpOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"]

# Placeholder for "the pid of the process that installs the filter", resolved at compile
# time. Sound only where the process cannot fork (the promise 'proc' is absent), because
# a forked child would inherit a filter naming its parent's pid.
SELF_PID = -1

_set = object.__setattr__  # the fields of a frozen instance, set once in __init__


@plain(frozen=True, slots=True)
class Arg:
    """Condition on system-call argument `index` (0-5), as libseccomp's scmp_arg_cmp.

    masked_eq: (arg & mask) == value.
    """

    index: int
    op: CmpOp
    value: int
    mask: int

    # Written out rather than @plain's generic one (which reads a table per field): the
    # promise table makes ~1,700 Args and Rules at every start of the launcher.
    def __init__(self, index: int, op: CmpOp, value: int, mask: int = 0) -> None:
        _set(self, "index", index)
        _set(self, "op", op)
        _set(self, "value", value)
        _set(self, "mask", mask)


# allow: the kernel lets the call through.
# enosys: the kernel fails it with ENOSYS (so libc falls back, e.g. clone3 -> clone).
# notify: the parent decides, by the named handler of sandbox.parent.notify (sound only
#         where the parent performs the operation itself or the decision cannot race).
RuleAction = Literal["allow", "enosys", "notify"]


@plain(frozen=True, slots=True)
class Rule:
    syscall: str
    args: tuple[Arg, ...]
    action: RuleAction
    handler: str | None  # for action "notify"
    # Other promises that must ALSO be pledged for this rule to apply (e.g. O_CREAT with
    # write access needs both 'cpath' and 'wpath').
    also: frozenset[str]
    # Promises whose rows replace this one when pledged (dns's parent-decided sendto is
    # not wanted where inet allows sendto outright); keeps rows of different actions on
    # one call disjoint, which the compiler relies on.
    unless: frozenset[str]

    def __init__(  # written out, as Arg's
        self,
        syscall: str,
        args: tuple[Arg, ...] = (),
        action: RuleAction = "allow",
        handler: str | None = None,
        also: frozenset[str] = frozenset(),
        unless: frozenset[str] = frozenset(),
    ) -> None:
        _set(self, "syscall", syscall)
        _set(self, "args", args)
        _set(self, "action", action)
        _set(self, "handler", handler)
        _set(self, "also", also)
        _set(self, "unless", unless)


_U64 = 0xFFFFFFFFFFFFFFFF

# The comparisons libseccomp compiles, on unsigned 64-bit register values.
_COMPARE: Mapping[str, Callable[[int, int], bool]] = MappingProxyType(
    {
        "eq": operator.eq,
        "ne": operator.ne,
        "lt": operator.lt,
        "le": operator.le,
        "gt": operator.gt,
        "ge": operator.ge,
    }
)

# Where several rules match, the most permissive action wins, as in the compiled filter.
PRECEDENCE: Mapping[str, int] = MappingProxyType({"allow": 3, "notify": 2, "enosys": 1})


def arg_matches(arg: Arg, args: Sequence[int], self_pid: int | None = None) -> bool:
    """The condition as the kernel evaluates it: on the 64-bit register value.

    A SELF_PID condition holds only when `self_pid` is given and equal.
    """
    if arg.index >= len(args):
        return False
    if arg.value == SELF_PID:
        if self_pid is None:
            return False
        value = self_pid
    else:
        value = arg.value
    a = args[arg.index] & _U64
    v = value & _U64
    if arg.op == "masked_eq":
        return a & (arg.mask & _U64) == v
    return _COMPARE[arg.op](a, v)


def rule_matches(
    rule: Rule, syscall: str, args: Sequence[int], self_pid: int | None = None
) -> bool:
    return rule.syscall == syscall and all(arg_matches(a, args, self_pid) for a in rule.args)


def match(
    rules: Iterable[Rule], syscall: str, args: Sequence[int], *, self_pid: int | None = None
) -> Rule | None:
    """The rule that decides this call (the most permissive match), or None (violation).

    The parent uses it on a user notification: a notify rule names the handler, None is a
    violation. Same semantics as the compiled filter.
    """
    best: Rule | None = None
    for rule in rules:
        if rule_matches(rule, syscall, args, self_pid) and (
            best is None or PRECEDENCE[rule.action] > PRECEDENCE[best.action]
        ):
            best = rule
    return best
