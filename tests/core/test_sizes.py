import pytest

from nca_cli.core.errors import NCAError
from nca_cli.core.sizes import format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("8GiB", 8 * 1024 ** 3), ("512 MB", 512_000_000), ("1.5g", 1_500_000_000), ("2000000000", 2_000_000_000),
    ("64kib", 65_536), (" 3 TiB ", 3 * 1024 ** 4), ("10b", 10), ("0.5MiB", 524_288), (4096, 4096), (2.5e9, 2_500_000_000),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["8 GiBs", "lots", "-1GB", "1e9", "", "GB", True])
def test_parse_size_refuses_unreadable_sizes_naming_the_option(text):
    with pytest.raises(NCAError, match="--budget.*like 8GiB"):
        parse_size(text, option="--budget")


def test_format_size():
    assert [format_size(n) for n in (512, 1536, 5 * 2 ** 30)] == ["512 B", "1.5 KiB", "5.0 GiB"]
