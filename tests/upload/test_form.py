"""iter_form: the same events however the body is cut; malformed bodies are a 422."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable

import httpx
import pytest

from chute.errors import ChuteError
from chute.upload.form import (
    MAX_FIELD_BYTES,
    MAX_PARTS,
    Field,
    FileData,
    FileEnd,
    FileStart,
    iter_form,
)

# Bytes that look like parts of the multipart syntax, inside the file's data.
FILE_BYTES = b"id,name\r\n1,--boundary\r\n2,\r\n--\r\n\x00\xff" + bytes(range(256)) * 40


def encode(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    """A body as a real client (httpx) encodes it: fields first, then files."""
    request = httpx.Request(
        "POST",
        "http://chute.test/",
        data=fields,
        files={name: (filename, data, "text/csv") for name, (filename, data) in files.items()},
    )
    return request.headers["content-type"], request.read()


def by_hand(
    fields: dict[str, str], file: tuple[str, bytes] | None = None, boundary: str = "XyZ-b-123"
) -> tuple[str, bytes]:
    """A body written out by hand; the file part (if any) first, as the seed sends it."""
    b = boundary.encode()
    body = b""
    if file is not None:
        filename, data = file
        body += (
            b"--" + b + b"\r\n"
            b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"'
            b"\r\nContent-Type: text/csv\r\n\r\n" + data + b"\r\n"
        )
    for name, value in fields.items():
        body += (
            b"--" + b + b"\r\n"
            b'Content-Disposition: form-data; name="'
            + name.encode()
            + b'"\r\n\r\n'
            + value.encode()
            + b"\r\n"
        )
    body += b"--" + b + b"--\r\n"
    return f"multipart/form-data; boundary={boundary}", body


async def _stream(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def events(content_type: str | None, pieces: Iterable[bytes]) -> list[object]:
    """All events, with consecutive file data joined (how it is cut is not meaningful)."""

    async def collect() -> list[object]:
        out: list[object] = []
        async for event in iter_form(content_type, _stream(pieces)):
            if isinstance(event, FileData):
                event = FileData(bytes(event.data))  # a view into the piece it came in
                if out and isinstance(out[-1], FileData):
                    out[-1] = FileData(bytes(out[-1].data) + event.data)
                    continue
            out.append(event)
        return out

    return asyncio.run(collect())


def tiny_pieces(body: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces = []
    position = 0
    while position < len(body):
        size = rng.randint(1, 7)
        pieces.append(body[position : position + size])
        position += size
    return pieces


def problem(content_type: str | None, pieces: Iterable[bytes]) -> ChuteError:
    with pytest.raises(ChuteError) as caught:
        events(content_type, pieces)
    assert caught.value.status == 422
    return caught.value


def test_one_piece_gives_fields_then_the_file() -> None:
    content_type, body = encode(
        {"chunk_index": "0", "total_chunks": "2"}, {"file": ("data.csv", FILE_BYTES)}
    )
    assert events(content_type, [body]) == [
        Field("chunk_index", "0"),
        Field("total_chunks", "2"),
        FileStart("file", "data.csv"),
        FileData(FILE_BYTES),
        FileEnd(),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_tiny_pieces_give_the_same_events(seed: int) -> None:
    content_type, body = encode(
        {"chunk_index": "1", "total_chunks": "4", "chunk_sha256": "ab" * 32},
        {"file": ("naïve name.csv", FILE_BYTES)},
    )
    whole = events(content_type, [body])
    assert FileStart("file", "naïve name.csv") in whole
    assert FileData(FILE_BYTES) in whole
    pieces = tiny_pieces(body, seed)
    assert max(len(p) for p in pieces) <= 7
    assert events(content_type, pieces) == whole


def test_empty_pieces_are_skipped() -> None:
    content_type, body = encode({"a": "1"}, {"file": ("f.csv", b"x,y\n")})
    pieces = [b""] + [bytes([c]) for c in body] + [b""]
    assert events(content_type, pieces) == events(content_type, [body])


@pytest.mark.parametrize("seed", range(3))
def test_file_part_first_in_tiny_pieces(seed: int) -> None:
    content_type, body = by_hand({"chunkIndex": "3", "totalChunks": "9"}, ("big.csv", FILE_BYTES))
    expected = [
        FileStart("file", "big.csv"),
        FileData(FILE_BYTES),
        FileEnd(),
        Field("chunkIndex", "3"),
        Field("totalChunks", "9"),
    ]
    assert events(content_type, [body]) == expected
    assert events(content_type, tiny_pieces(body, seed)) == expected


def test_events_come_as_the_bytes_arrive() -> None:
    """The file's bytes are handed on before the body ends: nothing is held whole."""
    content_type, body = encode({"a": "1"}, {"file": ("f.csv", FILE_BYTES)})
    cut = body.index(FILE_BYTES) + len(FILE_BYTES) // 2

    async def first_events() -> list[object]:
        arrived: list[object] = []
        done = asyncio.Event()

        async def body_stream() -> AsyncIterator[bytes]:
            yield body[:cut]
            await done.wait()  # the rest never comes until we have looked
            yield body[cut:]

        async for event in iter_form(content_type, body_stream()):
            arrived.append(event)
            if isinstance(event, FileData):
                done.set()
                break
        return arrived

    arrived = asyncio.run(first_events())
    assert arrived[:2] == [Field("a", "1"), FileStart("file", "f.csv")]
    assert isinstance(arrived[2], FileData)
    assert FILE_BYTES.startswith(arrived[2].data)


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param(None, id="none"),
        pytest.param("application/json", id="json"),
        pytest.param("application/x-www-form-urlencoded", id="urlencoded"),
        pytest.param("multipart/form-data", id="no-boundary"),
        pytest.param("multipart/form-data; boundary=", id="empty-boundary"),
        pytest.param("multipart/mixed; boundary=abc", id="mixed"),
    ],
)
def test_wrong_content_type_is_422(content_type: str | None) -> None:
    _, body = encode({"a": "1"}, {"file": ("f.csv", b"x\n")})
    error = problem(content_type, [body])
    assert "multipart/form-data" in error.detail or "boundary" in error.detail


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_body_is_422(keep: float) -> None:
    content_type, body = encode({"a": "1"}, {"file": ("f.csv", FILE_BYTES)})
    error = problem(content_type, [body[: int(len(body) * keep)]])
    assert "ended" in error.detail


def test_body_cut_just_before_the_closing_boundary_is_422() -> None:
    content_type, body = encode({"a": "1"}, {"file": ("f.csv", FILE_BYTES)})
    problem(content_type, [body[: body.rindex(b"--\r\n")]])


def test_empty_body_is_422() -> None:
    content_type, _ = by_hand({"a": "1"})
    assert "ended" in problem(content_type, []).detail


def test_garbage_body_is_422() -> None:
    problem("multipart/form-data; boundary=abc", [b"this is not a multipart body at all\r\n" * 3])


def test_part_without_a_name_is_422() -> None:
    body = b"--abc\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--abc--\r\n"
    problem("multipart/form-data; boundary=abc", [body])


def test_too_many_parts_is_422() -> None:
    content_type, body = by_hand({f"f{i}": "x" for i in range(MAX_PARTS + 1)})
    assert "more than" in problem(content_type, [body]).detail
    content_type, body = by_hand({f"f{i}": "x" for i in range(MAX_PARTS)})
    assert len(events(content_type, [body])) == MAX_PARTS


def test_a_field_over_the_limit_is_422() -> None:
    content_type, body = by_hand({"chunk_index": "1" * (MAX_FIELD_BYTES + 1)})
    assert "chunk_index" in problem(content_type, [body]).detail
    content_type, body = by_hand({"chunk_index": "1" * MAX_FIELD_BYTES})
    assert events(content_type, [body]) == [Field("chunk_index", "1" * MAX_FIELD_BYTES)]


def test_a_field_that_is_not_utf8_is_422() -> None:
    body = (
        b'--abc\r\nContent-Disposition: form-data; name="chunk_index"\r\n\r\n\xff\xfe\r\n'
        b"--abc--\r\n"
    )
    assert "UTF-8" in problem("multipart/form-data; boundary=abc", [body]).detail


def file_start(content_type: str, pieces: Iterable[bytes], length: int | None) -> FileStart:
    async def first() -> FileStart:
        async for event in iter_form(content_type, _stream(pieces), length):
            if isinstance(event, FileStart):
                return event
        raise AssertionError("no file part")

    return asyncio.run(first())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("data", [FILE_BYTES, b"\r\n--\r\n" + FILE_BYTES, b"\n"], ids=len)
def test_the_file_size_is_known_from_content_length(seed: int, data: bytes) -> None:
    # As httpx (and browsers, requests) send it: fields, then the file, then the end.
    content_type, body = encode(
        {"chunk_index": "1", "total_chunks": "4"}, {"file": ("data.csv", data)}
    )
    cuts = [[body], tiny_pieces(body, seed), [body[:1], body[1:]], [body[:-1], body[-1:]]]
    for pieces in cuts:
        assert file_start(content_type, pieces, len(body)).announced_size == len(data)


def test_without_content_length_the_file_size_is_unknown() -> None:
    content_type, body = encode({"chunk_index": "0"}, {"file": ("data.csv", FILE_BYTES)})
    assert file_start(content_type, [body], None).announced_size is None


def test_fields_after_the_file_make_the_prediction_too_large() -> None:
    # What the receiver then finds out from the bytes, and refuses for S3.
    content_type, body = by_hand({"chunk_index": "0", "total_chunks": "1"}, ("d.csv", FILE_BYTES))
    predicted = file_start(content_type, [body], len(body)).announced_size
    assert predicted is not None and predicted > len(FILE_BYTES)
