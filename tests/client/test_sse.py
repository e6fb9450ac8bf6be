"""The event-stream reader, on the lines a server sends."""

from __future__ import annotations

from chute.client.sse import NOTHING, events


def test_events_comments_and_multiline_data() -> None:
    lines = [
        "retry: 2000",
        "",
        "event: job",
        'data: {"id": 1}',
        "",
        ": keep-alive",
        "",
        "data: first",
        "data:second",
        "",
        "event: gone",
        'data: {"detail": "Job not found."}',
    ]
    assert list(events(lines)) == [
        NOTHING,
        ("job", '{"id": 1}'),
        NOTHING,
        ("message", "first\nsecond"),
        ("gone", '{"detail": "Job not found."}'),
    ]
