"""The command line: a thin layer over the library (`main` is the entry point)."""


def examples(*lines: str) -> str:
    """The "Examples:" block every command's --help ends with ("\b" keeps click from
    re-wrapping the lines that follow it)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)
