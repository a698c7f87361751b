"""Walking PyYAML's node tree with locations: the one walker of every file the sandbox reads.

Policy files (sandbox.policy.loader) and system files (sandbox.system.loader) are checked
on nodes, not on constructed objects, so that every problem carries FILE:LINE:COLUMN;
`Ctx` collects every problem of one file. `compose()` refuses aliases, anchors and deep
nesting before anything is built; `read_text()` bounds and decodes the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import yaml
else:

    class _LazyYaml:
        """PyYAML, imported on first use (see sandbox.policy.loader)."""

        def __getattr__(self, name: str) -> Any:
            import yaml as real

            globals()["yaml"] = real
            return getattr(real, name)

    yaml = _LazyYaml()

from sandbox.errors import PolicyError, Problem
from sandbox.policy.schema import MAX_DEPTH, MAX_POLICY_BYTES, Field, suggest

INT_RE = re.compile(r"[+-]?[0-9]+")  # decimal only: YAML 1.1 also reads 0x1F, 0o17, 1_000


def yaml_loader() -> Any:
    """libyaml's loader where PyYAML was built with it (faster; the same nodes and marks)."""
    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


# --- Node helpers: every problem is recorded with its location ---------------------------

_T = TypeVar("_T", bound=str)
Loc = tuple[int, int]  # line, column; both from 1

TAG = "tag:yaml.org,2002:"
SCALAR_TAGS = {TAG + t for t in ("str", "int", "float", "bool", "null")}
KINDS = {  # what a node is, for messages ("must be a list, not a string")
    TAG + "str": "a string",
    TAG + "int": "an integer",
    TAG + "float": "a number",
    TAG + "bool": "a boolean",
    TAG + "null": "an empty value",
}


def loc(node: yaml.Node) -> Loc:
    return node.start_mark.line + 1, node.start_mark.column + 1


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return KINDS.get(node.tag, f"a value tagged {node.tag}")


# A message names a value, it does not repeat it: a policy may hold a megabyte in one
# scalar, and every problem quoting it whole would print that megabyte again.
LONG_QUOTED = re.compile(r"'([^'\n]{80,})'")
MAX_MESSAGE = 1000


def shorten(message: str) -> str:
    message = LONG_QUOTED.sub(lambda m: f"'{m.group(1)[:40]}...{m.group(1)[-20:]}'", message)
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


class Ctx:
    """Where problems go while one file is checked."""

    def __init__(
        self, filename: str, text: str, base_dir: str, given: Mapping[str, str] | None = None
    ) -> None:
        self.filename = filename
        self.text = text
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.given: Mapping[str, str] = given or {}  # --set NAME=VALUE
        # ${NAME} -> value: the built-ins, then the declared parameters (loader._params).
        from sandbox.policy import params

        self.values: dict[str, str] = params.builtin_values()

    def expand(self, node: yaml.Node, text: str | None, what: str) -> str | None:
        """`text` with its ${NAME} references replaced, or None after recording why not."""
        if text is None or "${" not in text:
            return text
        from sandbox.policy import params

        try:
            return params.expand(text, self.values)
        except params.ParamError as exc:
            self.error(node, f"{what}: {exc}")
            return None

    def error(self, where: yaml.Node | Loc, message: str) -> None:
        line, column = loc(where) if isinstance(where, yaml.Node) else where
        self.problems.append(Problem(self.filename, line, column, shorten(message)))

    def text_of(self, node: yaml.Node, what: str) -> str | None:
        """A scalar exactly as written: strings, and numbers or booleans taken as text."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"{what} must be a string, not {kind_of(node)}")
            return None
        if node.tag not in SCALAR_TAGS:
            self.error(node, f"{what}: YAML tag {node.tag!r} is not allowed in a policy")
            return None
        if node.tag == TAG + "null":
            self.error(node, f'{what} has no value (write "" for an empty string)')
            return None
        value: str = node.value
        if "\0" in value:
            self.error(node, f"{what} contains a NUL character")
            return None
        return value

    def integer(self, node: yaml.Node, what: str, lo: int, hi: int) -> int | None:
        if not isinstance(node, yaml.ScalarNode) or not INT_RE.fullmatch(node.value):
            # YAML 1.1 also reads 0x1F, 0o17 and 1_000 as integers; policies use decimal only.
            kind = "a number in another notation" if node.tag == TAG + "int" else kind_of(node)
            self.error(node, f"{what} must be a whole number in decimal, not {kind}")
            return None
        # Compared as text first: int() refuses more than 4,300 digits (and a megabyte of
        # them would be slow), and no bound of a policy needs more than hi's digits.
        digits = node.value.lstrip("+-").lstrip("0")
        if len(digits) > len(str(max(abs(lo), abs(hi)))):
            shown = node.value if len(node.value) <= 20 else f"{node.value[:17]}..."
            self.error(node, f"{what} must be between {lo} and {hi}, not {shown}")
            return None
        value = int(node.value)
        if not lo <= value <= hi:
            self.error(node, f"{what} must be between {lo} and {hi}, not {value}")
            return None
        return value

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != TAG + "bool":
            self.error(node, f"{what} must be true or false, not {kind_of(node)}")
            return None
        return node.value.lower() in ("true", "yes", "on", "y")

    def choice(self, node: yaml.Node, what: str, choices: tuple[_T, ...]) -> _T | None:
        value = self.text_of(node, what)
        if value is None:
            return None
        for c in choices:
            if c == value:
                return c
        self.error(
            node,
            f"{what} must be one of {', '.join(choices)}, not '{value}'{suggest(value, choices)}",
        )
        return None

    def _unit(self, node: yaml.Node, what: str, kind: str) -> tuple[str, float] | None:
        """(text, value) of a size or a duration, or None after recording the problem."""
        value = self.text_of(node, what)
        if value is None:
            return None
        from sandbox.policy import units  # parsed policies only: Decimal costs the -p/-v path

        parse = {"size": units.parse_size, "duration": units.parse_duration}[kind]
        try:
            return value, parse(value)
        except units.UnitError as exc:
            self.error(node, f"{what}: {exc}")
            return None

    def size(self, node: yaml.Node, what: str, minimum: int = 0) -> int | None:
        parsed = self._unit(node, what, "size")
        if parsed is None:
            return None
        text, result = parsed
        if result < minimum:
            self.error(node, f"{what} must be at least {minimum} bytes, not {text}")
            return None
        return int(result)

    def duration(self, node: yaml.Node, what: str) -> float | None:
        parsed = self._unit(node, what, "duration")
        if parsed is None:
            return None
        text, result = parsed
        if result <= 0:
            self.error(node, f"{what} must be more than 0 seconds, not {text}")
            return None
        return result

    def items(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]] | None:
        """Entries of a mapping, keys as text; duplicate keys are problems (PyYAML allows them)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping (key: value), not {kind_of(node)}")
            return None
        seen: dict[str, yaml.Node] = {}
        out: list[tuple[str, yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == TAG + "null":
                self.error(key_node, f"a key in {what} must be a string, not {kind_of(key_node)}")
                continue
            key: str = key_node.value
            if key in seen:
                first = seen[key].start_mark.line + 1
                self.error(key_node, f"duplicate key '{key}' in {what} (first at line {first})")
                continue
            seen[key] = key_node
            out.append((key, key_node, value_node))
        return out

    def fields(self, node: yaml.Node, what: str, table: Mapping[str, Field]) -> Fields | None:
        """A mapping whose keys must be in `table`; unknown or missing required keys: problems."""
        entries = self.items(node, what)
        return None if entries is None else self.fields_of(entries, node, what, table)

    def fields_of(
        self,
        entries: list[tuple[str, yaml.Node, yaml.Node]],
        node: yaml.Node,
        what: str,
        table: Mapping[str, Field],
    ) -> Fields:
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, key_node, value_node in entries:
            if key not in table:
                self.error(
                    key_node,
                    f"unknown key '{key}' in {what}{suggest(key, table)}; "
                    f"allowed: {', '.join(table)}",
                )
                continue
            found[key] = (key_node, value_node)
        for key, f in table.items():
            if f.required and key not in found:
                self.error(node, f"{what} is missing the required key '{key}'")
        return Fields(found, table)

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list, not {kind_of(node)}")
            return None
        return list(node.value)

    def words(self, node: yaml.Node, what: str) -> list[tuple[str, Loc]] | None:
        """Promise words of a string ("stdio rpath") or a list, each with its own location."""
        if isinstance(node, yaml.SequenceNode):
            out: list[tuple[str, Loc]] = []
            for item in node.value:
                words = self._scalar_words(item, what)
                if words is not None:
                    out.extend(words)
            return out
        return self._scalar_words(node, what)

    def _scalar_words(self, node: yaml.Node, what: str) -> list[tuple[str, Loc]] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == TAG + "null":
            self.error(node, f'{what} has no value (write "" for no promises)')
            return None
        value = self.text_of(node, what)
        if value is None or not isinstance(node, yaml.ScalarNode):
            return None
        start = node.start_mark
        quote = 1 if node.style in ("'", '"') else 0
        begin = start.index + quote
        # Point at each word when the scalar is on one line exactly as written (no escapes);
        # otherwise at the scalar.
        exact = (
            node.style not in ("|", ">")
            and start.line == node.end_mark.line
            and self.text[begin : begin + len(value)] == value
        )
        out = []
        for m in re.finditer(r"\S+", value):
            where = (start.line + 1, start.column + 1 + quote + m.start()) if exact else loc(node)
            out.append((m.group(), where))
        return out


class Fields:
    """The keys found in one mapping. Reading a key not in the table is a programming error."""

    def __init__(self, found: dict[str, tuple[yaml.Node, yaml.Node]], table: Mapping[str, Field]):
        self._found = found
        self._table = table

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> yaml.Node | None:
        if key not in self._table:
            raise KeyError(f"policy loader bug: '{key}' is not in its table")
        entry = self._found.get(key)
        return None if entry is None else entry[1]

    def key_node(self, key: str) -> yaml.Node | None:
        entry = self._found.get(key)
        return None if entry is None else entry[0]


# --- Reading YAML safely -----------------------------------------------------------------


def line_col(text: str, index: int) -> Loc:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def compose(ctx: Ctx) -> yaml.Node | None:
    """The node tree, or None with problems recorded: syntax errors, aliases, deep nesting."""
    try:
        # A first pass over the event stream (no recursion, nothing built) refuses aliases
        # and anchors (billion laughs) and deep nesting before anything is composed.
        depth = 0
        for event in yaml.parse(ctx.text, Loader=yaml_loader()):
            if isinstance(event, yaml.AliasEvent):
                ctx.error(mark_loc(event.start_mark), "YAML aliases (*name) are not allowed")
            elif isinstance(event, yaml.NodeEvent) and event.anchor is not None:
                ctx.error(mark_loc(event.start_mark), "YAML anchors (&name) are not allowed")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    ctx.error(
                        mark_loc(event.start_mark),
                        f"nesting deeper than {MAX_DEPTH} levels; a policy needs at most 4",
                    )
                    return None
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        if ctx.problems:
            return None
        return yaml.compose(ctx.text, Loader=yaml_loader())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = mark_loc(mark) if mark is not None else (1, 1)
        detail = " ".join(s for s in (exc.problem, exc.context) if s)
        ctx.error(where, f"YAML syntax error: {detail}")
    except yaml.reader.ReaderError as exc:
        ctx.error(line_col(ctx.text, exc.position), f"YAML syntax error: {exc.reason}")
    except yaml.YAMLError as exc:
        ctx.error((1, 1), f"YAML syntax error: {exc}")
    return None


def mark_loc(mark: Any) -> Loc:  # yaml.Mark, or the C loader's own Mark class
    return mark.line + 1, mark.column + 1


def read_text(filename: str, what: str = "policy") -> tuple[str, bytes]:
    """(text, bytes) of a file of at most MAX_POLICY_BYTES of UTF-8; PolicyError otherwise."""
    try:
        with open(filename, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(
            [Problem(filename, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from exc
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(
            [Problem(filename, 1, 1, f"the file is larger than {MAX_POLICY_BYTES} bytes (1 MiB)")]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = line_col(data.decode("utf-8", "replace"), exc.start)
        raise PolicyError([Problem(filename, line, column, "the file is not UTF-8 text")]) from exc
    return text, data


def raise_problems(ctx: Ctx, fallback: str) -> None:
    """PolicyError with every problem of `ctx`, in file order (nothing if there is none)."""
    if ctx.problems:
        problems = sorted(ctx.problems, key=lambda p: (p.line, p.column))
        raise PolicyError(problems or [Problem(ctx.filename, 1, 1, fallback)])
