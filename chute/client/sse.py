"""Reading Server-Sent Events (the `text/event-stream` format) from a stream of lines.

Only what Chute's event stream uses: `event`, `data` (several lines join with a
newline), comments (lines starting with `:`), a blank line ending each event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# What a block with no data yields: a comment such as a keep-alive, or a `retry:` line.
NOTHING = ("", "")


def events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) for each event; `NOTHING` for each block that carries none,
    so a reader waiting with a deadline gets to check it at every keep-alive."""
    name = ""
    data: list[str] = []
    for line in lines:
        if line == "":
            yield (name or "message", "\n".join(data)) if data else NOTHING
            name = ""
            data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data:
        yield name or "message", "\n".join(data)
