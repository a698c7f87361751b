"""Errors as values a user can act on, each carrying the exit status of `sandbox run`."""

from __future__ import annotations

from sandbox.plain import plain


class SandboxError(Exception):
    """Base of every error the sandbox raises on purpose."""

    exit_status = 3


@plain(frozen=True)
class Problem:
    """One problem in a policy, with its location (line and column from 1)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(SandboxError):
    """A policy that cannot be loaded: every problem found, not only the first."""

    exit_status = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(SandboxError):
    """Bad command-line usage."""

    exit_status = 2


class SetupError(SandboxError):
    """The sandbox could not be set up (missing kernel support, unreadable path, ...)."""

    exit_status = 3
