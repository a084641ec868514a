from dataclasses import dataclass

import pytest

from nca_cli.core.schema import (
    SettingError,
    Settings,
    check_fields,
    schema_of,
    setting,
    subsection,
    validate_section,
)


@dataclass
class Example:
    size: int = setting(4, kind="int", lo=1, hi=8, help="a size")
    mode: str = setting("a", kind="choice", choices=("a", "b"))
    sides: list = setting(kind="ints", lo=1, default_factory=lambda: [2, 3])


def test_one_rule_for_recipes_and_python():
    schema = schema_of(Example)
    assert schema["size"].default == 4 and schema["sides"].default == [2, 3]
    assert validate_section({"size": 5}, schema, "model", "r.yaml") == {"size": 5, "mode": "a", "sides": [2, 3]}
    with pytest.raises(SettingError, match=r"Recipe key 'model.size' in r.yaml must be at most 8, got 9"):
        validate_section({"size": 9}, schema, "model", "r.yaml")
    with pytest.raises(SettingError, match=r"Unknown recipe key 'model.mdoe' in r.yaml; did you mean 'model.mode'"):
        validate_section({"mdoe": "b"}, schema, "model", "r.yaml")
    with pytest.raises(ValueError, match="Example setting 'mode'"):
        check_fields(Example(mode="c"))


@dataclass
class Inner(Settings):
    SECTION = "outer.inner"
    p: float = setting(0.5, kind="float", lo=0.0, hi=1.0)


@dataclass
class Outer(Settings):
    SECTION = "outer"
    n: int = setting(3, kind="int", lo=1)
    inner: Inner = subsection(Inner)


def test_settings_sections_read_nested_mappings_with_defaults_and_refuse_unknown_keys():
    o = Outer.read({"n": 5, "inner": {"p": "0.25"}}, "outer", "r.yaml")
    assert o == Outer(n=5, inner=Inner(p=0.25)) and o.to_dict() == {"n": 5, "inner": {"p": 0.25}}
    assert Outer.read(None, "outer") == Outer(n=3, inner=Inner(p=0.5))
    with pytest.raises(SettingError, match=r"Unknown recipe key 'outer.inner.pp' in r.yaml; did you mean 'outer.inner.p'"):
        Outer.read({"inner": {"pp": 1}}, "outer", "r.yaml")
    with pytest.raises(SettingError, match="Outer setting 'n' must be at least 1, got 0"):
        Outer(n=0)
    assert o.with_flags(n=None) is o and o.with_flags(n=2) == Outer(n=2, inner=Inner(p=0.25))
    with pytest.raises(SettingError, match=r"Setting 'outer.n' must be an integer, got 2.5; fix the value"):
        o.with_flags(n=2.5)
