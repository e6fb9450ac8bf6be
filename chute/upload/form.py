"""A streaming reader of multipart/form-data bodies.

It turns the request stream into events (a field, the start of a file part, a piece of
the file's bytes, its end) as the bytes arrive, so the file part can go to storage
without ever being held whole. The parsing itself is python-multipart's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from chute.errors import ChuteError, Problem

MAX_FIELD_BYTES = 1024
MAX_PARTS = 32


@dataclass(frozen=True)
class Field:
    name: str
    value: str


@dataclass(frozen=True)
class FileStart:
    name: str
    filename: str
    # The file's size as the request announces it: its Content-Length less the bytes
    # before the file's data and the closing delimiter, which is exact when the file is
    # the form's last part (browsers, httpx and requests send it so). None without a
    # Content-Length. The storage is told it (`Part.size`: room claimed exactly, and
    # what a store that needs sizes first streams with); never more bytes are written.
    announced_size: int | None = None


@dataclass(frozen=True)
class FileData:
    data: bytes | memoryview


@dataclass(frozen=True)
class FileEnd:
    pass


Event = Field | FileStart | FileData | FileEnd


def malformed(why: str) -> ChuteError:
    return ChuteError(Problem.MALFORMED_FORM, why=why)


def closing_delimiter(boundary: bytes) -> bytes:
    """What ends the body after the last part's data (RFC 2046, without an epilogue)."""
    return b"\r\n--" + boundary + b"--\r\n"


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise malformed("the Content-Type must be multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary:
        raise malformed("the Content-Type has no boundary")
    return boundary


class _Collector:
    """python-multipart callbacks that turn one written piece into a list of events."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.finished = False
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._field_name = ""
        self._is_file = False
        self._value = bytearray()
        # Where in the body the bytes being written end, and the body's declared length:
        # set by `iter_form` so a file part's start can tell the file's size.
        self.written_to = 0
        self.content_length: int | None = None
        self.closing = 0
        self.file_seen = False

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise malformed(f"more than {MAX_PARTS} parts")
        self._disposition = b""
        self._value.clear()

    def header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        if kind != b"form-data" or b"name" not in options:
            raise malformed("a part has no Content-Disposition: form-data with a name")
        self._field_name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file:
            filename = options[b"filename"].decode("utf-8", "replace")
            # The parser is given the body up to each line end until a file part starts,
            # so its data starts where the bytes written so far end.
            size = None
            if self.content_length is not None and not self.file_seen:
                size = max(self.content_length - self.written_to - self.closing, 0)
            self.file_seen = True
            self.events.append(FileStart(self._field_name, filename, size))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            # A view, not a copy: the bytes go on to be hashed and written as they are.
            self.events.append(FileData(memoryview(data)[start:end]))
            return
        if len(self._value) + end - start > MAX_FIELD_BYTES:
            raise malformed(f"the field {self._field_name!r} is longer than {MAX_FIELD_BYTES}")
        self._value.extend(data[start:end])

    def part_end(self) -> None:
        if self._is_file:
            self.events.append(FileEnd())
            return
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise malformed(f"the field {self._field_name!r} is not UTF-8") from None
        self.events.append(Field(self._field_name, value))

    def end(self) -> None:
        self.finished = True


def _write(parser: MultipartParser, collector: _Collector, piece: bytes, offset: int) -> None:
    """Write `piece`, the body's bytes from `offset` on. Until the first file part starts,
    line by line: a part's headers end at a line end, so the bytes before the file's data
    are known exactly (`FileStart.announced_size`). Past it the pieces go whole."""
    try:
        start = 0
        while not collector.file_seen and start < len(piece):
            end = piece.find(b"\n", start)
            end = len(piece) if end == -1 else end + 1
            collector.written_to = offset + end
            parser.write(piece[start:end])
            start = end
        if start < len(piece):
            parser.write(piece[start:] if start else piece)
    except FormParserError as exc:
        raise malformed(str(exc)) from None


async def iter_form(
    content_type: str | None, body: AsyncIterator[bytes], content_length: int | None = None
) -> AsyncIterator[Event]:
    """Yield the events of a multipart body as its bytes arrive. Raises ChuteError (422)."""
    collector = _Collector()
    boundary = boundary_of(content_type)
    collector.content_length = content_length
    collector.closing = len(closing_delimiter(boundary))
    parser = MultipartParser(boundary, collector.callbacks())
    offset = 0
    async for piece in body:
        if not piece:
            continue
        _write(parser, collector, piece, offset)
        offset += len(piece)
        events, collector.events = collector.events, []
        for event in events:
            yield event
    if not collector.finished:
        raise malformed("the body ended before the closing boundary")
