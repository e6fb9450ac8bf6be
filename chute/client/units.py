"""Sizes typed by people: `100M`, `64KiB`, `1.5G`, `262144`."""

from __future__ import annotations

import re

# Binary multiples, as the server's own defaults are written (100 MiB chunks):
# K, KB and KiB all mean 1024.
_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from `text`; ValueError with plain words when it is not a size."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 100M, 64KiB, 1G, 262144)")
    number, unit = match.groups()
    size = int(float(number) * _FACTORS[unit.lower()])
    if size < 1:
        raise ValueError(f"{text!r} is less than one byte")
    return size
