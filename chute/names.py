"""Names people give things (a job's name, an uploaded file's name): the one rule for both.

A name is 1 to 200 characters with no control character (DESIGN §2). It is shown on pages
and in terminals and stored in every database: PostgreSQL refuses NUL in text outright, and
the other controls rewrite what a terminal or a page shows. Refused, as:
- Cc: the C0 controls (NUL, ESC, CR, LF, ...), DEL and the C1 controls;
- Zl, Zp: the line and paragraph separators (U+2028, U+2029), which break lines too;
- Cs: lone surrogates, which no database encoding stores;
- the bidirectional controls, which reorder how the rest displays (U+202E makes
  "report\u202egpj.exe" read as "reportexe.jpg").
Other format characters (Cf) stay allowed: the zero-width joiner builds emoji sequences,
the soft hyphen and the byte-order mark are harmless text.
"""

from __future__ import annotations

import unicodedata

NAME_MAX = 200
_REFUSED_CATEGORIES = {"Cc", "Zl", "Zp", "Cs"}
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# The same rule as a regular expression (lone surrogates aside), for the OpenAPI document,
# so clients and API fuzzers can tell a name that will be taken.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+$"


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid name, in plain words, or None when it is."""
    if not name:
        return "must not be empty"
    if len(name) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters, not {len(name)}"
    for position, char in enumerate(name, 1):
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char in BIDI_CONTROLS:
            return f"must not hold control characters (character {position} is U+{ord(char):04X})"
    return None
