"""Command options declared once, as dataclass fields: the CLI builds its flags from them.

    @dataclass
    class SegmentOptions:
        output: Path = option(..., "-o", "--output", help="Output file or folder.")
        ensemble: int = option(1, "--ensemble", min=1, help="Stochastic runs.")

``nca_cli.cli`` turns such a dataclass into a Typer command (flags, help, ranges, choices);
the core package receives the dataclass instance. Nothing here imports Typer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

REQUIRED = ...


@dataclass(frozen=True)
class Flag:
    flags: tuple[str, ...]
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    argument: bool = False
    hidden: bool = False


def option(default: Any = REQUIRED, *flags: str, help: str, min: float | None = None, max: float | None = None,
           choices: tuple[str, ...] = (), argument: bool = False, hidden: bool = False) -> Any:
    """A command option (or, with ``argument``, a positional argument); ``...`` = required."""
    meta = {"cli": Flag(tuple(flags), help, min, max, tuple(choices), argument, hidden)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata=meta)
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class NoOptions:
    """The options of a command that takes none (``nca version``)."""


def device_option() -> Any:
    """The ``--device`` option every command that computes takes."""
    return option("auto", "--device", help="auto, cpu or cuda.")


def flag_of(field: dataclasses.Field) -> Flag | None:
    return field.metadata.get("cli")


def flag_name(cls, name: str) -> str:
    """The command-line spelling of option ``name`` of ``cls`` (``--memory-budget``)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            spec = flag_of(f)
            if spec is None or spec.argument:
                return name.upper()
            longs = [x for x in spec.flags if x.startswith("--")]
            return longs[0] if longs else spec.flags[0]
    raise KeyError(name)
