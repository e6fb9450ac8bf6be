"""CsvStartCheck: chunk 0 must be the start of a text CSV file."""

from __future__ import annotations

import codecs
import gzip
import io
import zipfile
from collections.abc import Iterable
from typing import Any

import pytest

from chute.errors import ChuteError
from chute.upload.csvcheck import HEAD_BYTES, CsvStartCheck, check_encoding

TEXT = "id,name,city\n1,Zoë,Kraków\n2,Ærøskøbing,Malmö\n"


def check(
    pieces: Iterable[bytes], params: dict[str, Any] | None = None, *, whole_file: bool = False
) -> CsvStartCheck:
    checker = CsvStartCheck(params or {})
    for piece in pieces:
        checker.feed(piece)
    checker.finish(whole_file)
    return checker


def one_by_one(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def refused(
    pieces: Iterable[bytes], params: dict[str, Any] | None = None, *, whole_file: bool = False
) -> str:
    with pytest.raises(ChuteError) as caught:
        check(pieces, params, whole_file=whole_file)
    assert caught.value.status == 422
    return caught.value.detail


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize(
    ("data", "params"),
    [
        pytest.param(TEXT.encode(), {}, id="utf-8"),
        pytest.param(codecs.BOM_UTF8 + TEXT.encode(), {}, id="utf-8-bom"),
        pytest.param("id,name\n1,café\n2,naïve\n".encode("latin-1"), {}, id="latin-1"),
        pytest.param(TEXT.encode("utf-16"), {}, id="utf-16-bom"),
        pytest.param(codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"), {}, id="utf-16-le-bom"),
        pytest.param("a;b\n1;€\n".encode("cp1252"), {"encoding": "cp1252"}, id="declared"),
        pytest.param(b"x\n", {}, id="tiny"),
        pytest.param(b"\n\n1,2\n", {"header": False}, id="no-header-expected"),
    ],
)
def test_accepted(data: bytes, params: dict[str, Any], split: bool) -> None:
    check(one_by_one(data) if split else [data], params)
    check(one_by_one(data) if split else [data], params, whole_file=True)


def test_a_bom_sets_the_encoding() -> None:
    assert check([codecs.BOM_UTF8 + TEXT.encode()]).encoding == "utf-8-sig"
    assert check([TEXT.encode("utf-16")]).encoding == "utf-16"
    assert check([TEXT.encode("utf-32")]).encoding == "utf-32"


@pytest.mark.parametrize("declared", ["utf-16-le", "utf-16-be"])
def test_declared_utf16_without_bom(declared: str) -> None:
    check([TEXT.encode(declared)], {"encoding": declared})


@pytest.mark.parametrize(
    ("data", "params"),
    [
        pytest.param(TEXT.encode("utf-16-le"), {"encoding": "utf-16-le"}, id="declared-le"),
        pytest.param(codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), {}, id="bom-16-be"),
        pytest.param(TEXT.encode("utf-32"), {}, id="bom-32"),
    ],
)
def test_utf16_and_32_in_tiny_pieces(data: bytes, params: dict[str, Any]) -> None:
    check([data[:3], data[3:]], params)


@pytest.mark.parametrize("where", [0, 1, 5000, HEAD_BYTES + 10, 3 * HEAD_BYTES])
def test_a_nul_byte_anywhere_in_the_chunk_is_refused(where: int) -> None:
    data = bytearray((TEXT * (4 * HEAD_BYTES // len(TEXT))).encode())
    data[where] = 0
    assert "NUL" in refused([bytes(data)])
    assert "NUL" in refused([bytes(data[i : i + 4096]) for i in range(0, len(data), 4096)])


def test_nul_in_a_later_piece_is_refused_as_it_arrives() -> None:
    checker = CsvStartCheck({})
    checker.feed(TEXT.encode() * 100)
    with pytest.raises(ChuteError) as caught:
        checker.feed(b"more,rows\n\x00")
    assert caught.value.status == 422


def test_gzip_is_refused() -> None:
    data = gzip.compress(TEXT.encode() * 100)
    assert "gzip" in refused([data])
    assert "gzip" in refused(one_by_one(data[:50]))


def test_zip_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", TEXT * 100)
    data = buffer.getvalue()
    assert "ZIP" in refused([data])
    assert "ZIP" in refused(one_by_one(data[:50]))


@pytest.mark.parametrize("magic", [b"%PDF-1.7\n", b"PAR1\x15\x04"])
def test_other_binary_formats_are_refused(magic: bytes) -> None:
    refused([magic + b"a,b\n1,2\n"])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\nid,name\n1,x\n", id="newline"),
        pytest.param(b"\r\nid,name\n", id="crlf"),
        pytest.param(b"   \t \nid,name\n", id="blank"),
        pytest.param(codecs.BOM_UTF8 + b"\nid\n", id="bom-then-newline"),
    ],
)
def test_an_empty_first_line_is_refused(data: bytes) -> None:
    assert "first line" in refused([data])


def test_no_line_end_in_the_head_is_refused() -> None:
    assert "line" in refused([b"x" * (HEAD_BYTES + 100)])


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        pytest.param("id,name\n1,café\n".encode("latin-1"), "utf-8", id="latin-1-as-utf-8"),
        pytest.param("id,name\n1,café\n".encode(), "ascii", id="utf-8-as-ascii"),
        pytest.param(b"id\n" + b"\xd8\x00" * 3, "utf-16-be", id="lone-surrogate"),
    ],
)
def test_bytes_invalid_in_the_declared_encoding_are_refused(data: bytes, encoding: str) -> None:
    assert encoding in refused([data], {"encoding": encoding}, whole_file=True)


def test_text_that_is_neither_utf8_nor_single_byte_is_refused() -> None:
    data = b"id,name\n\xff\x01\x02\x03\x04 binary-ish\n"
    assert "neither" in refused([data])


def test_a_multibyte_character_cut_at_the_chunk_end_is_fine() -> None:
    data = ("id,name\n" + "é" * 100).encode()[:-1]  # the chunk ends inside a character
    check([data], {"encoding": "utf-8"})
    # ... unless the file ends there too.
    assert "utf-8" in refused([data], {"encoding": "utf-8"}, whole_file=True)


# Python codecs that are not the encoding of a text file: bytes-to-bytes or str-to-str
# codecs, and text codecs that rewrite text, encode domain names or decode nothing.
NOT_FILE_ENCODINGS = [
    "base64",
    "hex",
    "rot13",
    "quopri",
    "uu",
    "zlib",
    "bz2",
    "punycode",
    "undefined",
    "idna",
    "unicode_escape",
    "raw_unicode_escape",
    "utf-7",
]


@pytest.mark.parametrize("encoding", NOT_FILE_ENCODINGS)
def test_check_encoding_refuses_codecs_that_are_not_text_encodings(encoding: str) -> None:
    with pytest.raises(ValueError, match="is not the character encoding of a text file"):
        check_encoding(encoding)


@pytest.mark.parametrize(
    "encoding",
    ["utf-8", "UTF8", "latin-1", "cp1252", "utf-16", "utf-32-le", "shift_jis", "gb18030", "cp037"],
)
def test_check_encoding_takes_text_encodings(encoding: str) -> None:
    assert check_encoding(encoding) == encoding


@pytest.mark.parametrize("encoding", [*NOT_FILE_ENCODINGS, "klingon", 42])
@pytest.mark.parametrize("whole_file", [False, True])
def test_a_stored_job_with_such_an_encoding_gets_a_422_not_an_exception(
    encoding: Any, whole_file: bool
) -> None:
    # Jobs are checked when created; chunk 0 checks again, for a job stored before that.
    for data in (TEXT.encode(), b"aWQsbmFtZQoxLDIK\n", b"x\x9c" + b"\x00" * 100):
        detail = refused([data], {"encoding": encoding}, whole_file=whole_file)
        assert "the job's encoding param" in detail, detail
