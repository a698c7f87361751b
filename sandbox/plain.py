"""Value classes for the launch path, without the cost of `dataclasses`.

`@dataclass` costs a cold `sandbox run` twice: importing `dataclasses` pulls in `inspect`
(with `ast`, `dis`, `tokenize`: ~8 ms), and every decorated class compiles its generated
methods from source (0.3-1 ms each, ~40 classes on the way to a launch). `@plain` gives
the same behaviour for what this project uses (an `__init__` taking the fields in order,
positionally or by name, with defaults and `field(default_factory=...)`; `__repr__`,
`__eq__`, `__hash__` by the fields when frozen; `frozen=True` refusing assignment;
`__post_init__`; `__match_args__`; `replace`, `asdict`, `field_names`) from a handful of
shared closures: nothing is compiled, nothing imported. The class gets `__slots__` (so
instances are as small and attribute access as fast as a slotted dataclass's) when asked,
as `dataclass(slots=True)`; without, the defaults stay class attributes, as a dataclass's.

mypy sees `plain` as a dataclass transform (PEP 681) and checks every constructor call
as it would a dataclass's.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (as dataclasses.FrozenInstanceError)."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Any = _Missing()


class _Field:
    __slots__ = ("default", "factory")

    def __init__(self, default: Any, factory: Any) -> None:
        self.default, self.factory = default, factory


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING) -> Any:
    """A field's default given as a value or as a factory called for each instance."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, None if default_factory is _MISSING else default_factory)


def _field_spec(cls: type) -> tuple[tuple[str, ...], tuple[Any, ...], tuple[Any, ...]]:
    """Names, defaults and factories of cls's fields: those of its record bases first,
    then its own annotations in order (ClassVar ones are not fields); a field named again
    keeps its place and takes the later default."""
    fields: dict[str, tuple[Any, Any]] = {}  # name -> (default, factory), in order
    for base in reversed(cls.__mro__[1:]):
        spec = base.__dict__.get("_plain_spec")
        if spec is not None:
            for n, d, f in zip(*spec, strict=True):
                fields[n] = (d, f)
    # The class's own annotations (not inspect.get_annotations: importing inspect is
    # what this module avoids).
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if "ClassVar" in str(annotation):
            continue
        value = cls.__dict__.get(name, _MISSING)
        is_field = isinstance(value, _Field)
        fields[name] = (value.default, value.factory) if is_field else (value, None)
    return (
        tuple(fields),
        tuple(d for d, _ in fields.values()),
        tuple(f for _, f in fields.values()),
    )


def _make_init(
    names: tuple[str, ...], defaults: tuple[Any, ...], factories: tuple[Any, ...], post: bool
) -> Any:
    count = len(names)
    setter = object.__setattr__
    table = tuple(zip(names, defaults, factories, strict=True))

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = len(args)
        if given > count:
            raise TypeError(
                f"{type(self).__qualname__}() takes {count} positional arguments "
                f"but {given} were given"
            )
        for i, (name, default, factory) in enumerate(table):
            if i < given:
                value = args[i]
                if name in kwargs:
                    raise TypeError(
                        f"{type(self).__qualname__}() got multiple values for argument {name!r}"
                    )
            else:
                value = kwargs.pop(name, _MISSING)
                if value is _MISSING:
                    if default is not _MISSING:
                        value = default
                    elif factory is not None:
                        value = factory()
                    else:
                        raise TypeError(
                            f"{type(self).__qualname__}() missing required argument: {name!r}"
                        )
            setter(self, name, value)
        if kwargs:
            raise TypeError(
                f"{type(self).__qualname__}() got an unexpected keyword argument "
                f"{next(iter(kwargs))!r}"
            )
        if post:
            self.__post_init__()

    return __init__


def _values(self: Any) -> tuple[Any, ...]:
    values: tuple[Any, ...] = type(self)._plain_values(self)
    return values


def _repr(self: Any) -> str:
    names = type(self)._plain_spec[0]
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> tuple[Any, ...]:
    return _values(self)


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for name, value in zip(type(self)._plain_spec[0], state, strict=True):
        object.__setattr__(self, name, value)


def _uses_class_cell(ns: dict[str, Any]) -> bool:
    """A method with zero-argument super() (or __class__) is bound to the class object it
    was defined in: a class rebuilt with __slots__ would break it."""
    for value in ns.values():
        func = getattr(value, "__func__", value)
        code = getattr(func, "__code__", None)
        if code is not None and "__class__" in code.co_freevars:
            return True
    return False


def _build(cls: type, frozen: bool, slots: bool) -> type:
    names, defaults, factories = _field_spec(cls)
    ns = dict(cls.__dict__)
    own = [n for n in names if n in ns.get("__annotations__", {})]
    for n in own:
        ns.pop(n, None)
    ns.pop("__dict__", None)
    ns.pop("__weakref__", None)
    inherited_slots = {s for b in cls.__mro__[1:] for s in b.__dict__.get("__slots__", ())}
    slotted = slots and "__slots__" not in ns and not _uses_class_cell(ns)
    if slotted:
        ns["__slots__"] = tuple(n for n in names if n not in inherited_slots)
    ns["_plain_spec"] = (names, defaults, factories)
    # The fields as a tuple in one C call (compared and hashed often: rule sets).
    getter = attrgetter(*names) if len(names) > 1 else None
    ns["_plain_values"] = staticmethod(
        getter if getter is not None else (lambda obj: tuple(getattr(obj, n) for n in names))
    )
    explicit_hash = "__hash__" in ns and not (ns["__hash__"] is None and "__eq__" in ns)
    if "__init__" not in ns:
        ns["__init__"] = _make_init(names, defaults, factories, hasattr(cls, "__post_init__"))
    if "__repr__" not in ns:
        ns["__repr__"] = _repr
    if "__eq__" not in ns:
        ns["__eq__"] = _eq
    if not explicit_hash:
        ns["__hash__"] = _hash if frozen else None
    if frozen:
        ns["__setattr__"] = _frozen_setattr
        ns["__delattr__"] = _frozen_delattr
        ns["__getstate__"] = _getstate
        ns["__setstate__"] = _setstate
    ns["__match_args__"] = names
    ns["__qualname__"] = cls.__qualname__
    if not slotted:
        for key in ("__init__", "__repr__", "__eq__", "__hash__", "__match_args__",
                    "_plain_spec", "_plain_values", "__setattr__", "__delattr__", "__getstate__",
                    "__setstate__"):  # fmt: skip
            if key in ns:
                setattr(cls, key, ns[key])
        # As a dataclass: a field's default stays a class attribute (code reads
        # Audit.window), a factory's marker goes.
        for n, default in zip(names, defaults, strict=True):
            if isinstance(cls.__dict__.get(n), _Field):
                if default is _MISSING:
                    delattr(cls, n)
                else:
                    setattr(cls, n, default)
        return cls
    return type(cls)(cls.__name__, cls.__bases__, ns)


if TYPE_CHECKING:
    from typing import dataclass_transform, overload

    @overload
    def plain(cls: type[_T], /) -> type[_T]: ...

    @overload
    def plain(*, frozen: bool = False, slots: bool = False) -> Any: ...

    @dataclass_transform(field_specifiers=(field,))
    def plain(
        cls: type[_T] | None = None, /, *, frozen: bool = False, slots: bool = False
    ) -> Any: ...

else:

    def plain(cls=None, /, *, frozen=False, slots=False):
        """A value class with the fields its annotations name (see the module's docstring).
        slots: give it __slots__ (as dataclass(slots=True): its fields' defaults are then
        not class attributes, and no other attribute can be set)."""
        if cls is None:
            return lambda c: _build(c, frozen, slots)
        return _build(cls, frozen, slots)


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record obj with the fields named in changes replaced (a dataclass
    instance goes to dataclasses.replace: callers need not know which one they hold)."""
    spec = getattr(type(obj), "_plain_spec", None)
    if spec is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    names = spec[0]
    for name in changes:
        if name not in names:
            raise TypeError(f"{type(obj).__qualname__} has no field {name!r}")
    values = {n: changes[n] if n in changes else getattr(obj, n) for n in names}
    return type(obj)(**values)


def field_names(cls_or_obj: Any) -> tuple[str, ...]:
    """The names of a record's fields, in order."""
    names: tuple[str, ...] = cls_or_obj._plain_spec[0]
    return names


def is_plain(obj: Any) -> bool:
    return hasattr(type(obj) if not isinstance(obj, type) else obj, "_plain_spec")


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of a record as a dict, records, lists, tuples and dicts within converted
    recursively (as dataclasses.asdict)."""
    return {n: _convert(getattr(obj, n)) for n in field_names(obj)}


def _convert(value: Any) -> Any:
    if is_plain(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, list | tuple):
        return type(value)(_convert(v) for v in value)
    if isinstance(value, dict):
        return {_convert(k): _convert(v) for k, v in value.items()}
    return value
