from dataclasses import dataclass

import pytest

from nca_cli.core.schema import (
    SettingError,
    check_fields,
    schema_of,
    setting,
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
