"""Sizes typed on the command line."""

from __future__ import annotations

import pytest

from chute.client.units import parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("262144", 262144), ("64K", 65536), ("64KiB", 65536), ("100M", 100 * 2**20),
     ("100mb", 100 * 2**20), ("1.5G", 3 * 2**29), (" 2 g ", 2 * 2**30), ("1T", 2**40)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "lots", "-1M", "1X", "0", "0.1", "1e6", "1 M B"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
