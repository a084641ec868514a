"""Settings described once, validated everywhere: dataclass fields carry their checks.

A configuration dataclass declares each field with :func:`setting` (kind, range, choices,
help). :func:`schema_of` turns the dataclass into the key table a recipe section is
validated against, and :func:`check_fields` applies the same checks to an instance built in
Python, so a value is checked by one rule whether it comes from a recipe, ``--set`` or code.

Kinds: ``int``, ``float``, ``bool``, ``str``, ``path``, ``choice``, ``ints``/``floats`` (a
non-empty list; a single number becomes a one-element list), ``factors`` (per level
transition an integer or a per-axis list of integers), ``any`` and ``section`` (a mapping
checked elsewhere).

A recipe section (``data``, ``training``, ``vwsl``) is a :class:`Settings` dataclass: its
fields are :func:`setting` s, a nested section is declared with :func:`subsection`, and
:meth:`Settings.read` validates a mapping (unknown keys refused, defaults filled) into it.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import NCAError

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Key:
    kind: str
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    required: bool = False
    help: str = ""


class SettingError(NCAError):
    """A setting (recipe key, ``--set`` override) with a wrong value or name."""


def setting(default: Any = MISSING, *, kind: str, lo: float | None = None, hi: float | None = None,
            choices: tuple = (), help: str = "", default_factory=MISSING) -> Any:
    """A dataclass field with its checks (see the module docstring)."""
    required = default is MISSING and default_factory is MISSING
    meta = {"key": Key(kind, None if required or default is MISSING else default, lo, hi, tuple(choices), required, help)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def schema_of(cls) -> dict[str, Key]:
    """``{field name: Key}`` of a dataclass declared with :func:`setting`."""
    out = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key")
        if key is None:
            continue
        if f.default_factory is not MISSING:  # mutable defaults: the factory's value
            key = dataclasses.replace(key, default=f.default_factory())
        out[f.name] = key
    return out


def check_fields(obj, error=ValueError) -> None:
    """Check every field of a dataclass instance by its :func:`setting` (raises ``error``)."""
    for name, key in schema_of(type(obj)).items():
        try:
            check_value(name, key, getattr(obj, name), None, label=f"{type(obj).__name__} setting")
        except SettingError as exc:
            raise error(str(exc)) from None


def _where(path: str | None) -> str:
    return f" in {path}" if path else ""


def subsection(cls) -> Any:
    """A dataclass field holding a nested :class:`Settings` section (defaults: the section's own)."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


class Settings:
    """Base of a typed settings section: fields declared with :func:`setting` or :func:`subsection`,
    checked on construction (also by ``dataclasses.replace``), read from a mapping by :meth:`read`.
    ``SECTION`` is the section's recipe key, for messages."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        check_fields(self, SettingError)

    @classmethod
    def schema(cls) -> dict:
        """``{key: Key or nested schema}``, the table :func:`validate_section` checks a mapping against."""
        keys = schema_of(cls)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            nested = f.metadata.get("section")
            if nested is not None:
                out[f.name] = nested.schema()
            elif f.name in keys:
                out[f.name] = keys[f.name]
        return out

    @classmethod
    def read(cls, data: Any, prefix: str, path: str | None = None):
        """The section a recipe mapping describes: every key checked, unknown keys refused, defaults filled."""
        return cls.build(validate_section(data, cls.schema(), prefix, path))

    @classmethod
    def build(cls, values: dict):
        """An instance from already validated values (nested sections built too)."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            nested = f.metadata.get("section")
            if nested is not None:
                kwargs[f.name] = nested.build(values[f.name])
            elif f.name in values:
                kwargs[f.name] = values[f.name]
        return cls(**kwargs)

    def with_flags(self, **flags):
        """The one precedence rule of a setting: a flag given (not ``None``) wins over this
        section's value, which is the recipe's value or else the declared default."""
        keys = schema_of(type(self))
        given = {k: check_value(f"{self.SECTION}.{k}" if self.SECTION else k, keys[k], v, None, label="Setting")
                 for k, v in flags.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict:
        """The section as a recipe file writes it (settings only, nested sections as mappings)."""
        keys = self.schema()
        return {k: copy.deepcopy(v.to_dict() if isinstance(v, Settings) else v)
                for k, v in vars(self).items() if k in keys}


def check_value(key: str, spec: Key, value: Any, path: str | None, label: str = "Recipe key") -> Any:
    """``value`` checked (and lightly converted: ``"1e-3"`` to a float) against ``spec``."""

    def bad(what: str):
        raise SettingError(f"{label} '{key}'{_where(path)} {what}; fix the value.")

    if value is None:
        if spec.required:
            bad("is required but missing")
        return None
    check = _CHECKS.get(spec.kind)
    return check(value, spec, bad) if check is not None else value


def _number(v: Any, spec: Key, bad, integer: bool) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        bad(f"must be {'an integer' if integer else 'a number'}, got {v!r}")
    if spec.lo is not None and v < spec.lo:
        bad(f"must be at least {spec.lo:g}, got {v!r}")
    if spec.hi is not None and v > spec.hi:
        bad(f"must be at most {spec.hi:g}, got {v!r}")
    return v


def _float(value: Any, spec: Key, bad) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            bad(f"must be a number, got {value!r}")
    return float(_number(value, spec, bad, False))


def _of_type(kind: type, what: str):
    def check(value: Any, spec: Key, bad) -> Any:
        if not isinstance(value, kind):
            bad(f"must be {what}, got {value!r}")
        return value
    return check


def _choice(value: Any, spec: Key, bad) -> Any:
    if value not in spec.choices:
        bad(f"must be one of {', '.join(str(c) for c in spec.choices)}, got {value!r}")
    return value


def _numbers(integer: bool):
    def check(value: Any, spec: Key, bad) -> list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            bad(f"must be a non-empty list of numbers, got {value!r}")
        return [_number(v, spec, bad, integer) for v in value]
    return check


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _factors(value: Any, spec: Key, bad) -> list:
    if not isinstance(value, (list, tuple)):
        bad(f"must be a list with one factor (or per-axis factor list) per level transition, got {value!r}")
    out = []
    for f in value:
        if _positive_int(f):
            out.append(f)
        elif isinstance(f, (list, tuple)) and f and all(_positive_int(v) for v in f):
            out.append(list(f))
        else:
            bad(f"must hold positive integers or lists of them, got {f!r}")
    return out


_CHECKS = {
    "int": lambda value, spec, bad: _number(value, spec, bad, True),
    "float": _float,
    "bool": _of_type(bool, "true or false"),
    "str": _of_type(str, "a string"),
    "path": _of_type(str, "a string"),
    "choice": _choice,
    "ints": _numbers(True),
    "floats": _numbers(False),
    "factors": _factors,
}


def validate_section(data: Any, schema: dict, prefix: str, path: str | None) -> dict:
    """A mapping checked against ``schema`` (``{key: Key or nested schema}``), defaults filled in.

    An unknown key ends in one sentence naming it, the file and the closest valid key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingError(f"Recipe section '{prefix or 'top level'}'{_where(path)} must be a mapping; fix its indentation.")
    for key in data:
        if key not in schema:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.5)
            hint = f"did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else \
                f"valid keys: {', '.join(schema)}."
            raise SettingError(f"Unknown recipe key '{full}'{_where(path)}; {hint}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        full = f"{prefix}.{key}" if prefix else key
        value = data.get(key)
        if isinstance(spec, dict):
            out[key] = validate_section(value, spec, full, path)
        elif spec.kind == "section":
            out[key] = value
        else:
            given = value if key in data else copy.deepcopy(spec.default)
            out[key] = check_value(full, spec, given, path)
    return out
