"""The check of chunk 0: is this the start of a CSV file at all?

Run on the bytes as they stream in, so a wrong file fails in its first seconds,
not after 20 GB. It looks for NUL bytes in the whole chunk and, in its first
64 KiB, for text in the declared (or sniffed) encoding and a header line.
"""

from __future__ import annotations

import codecs
from typing import Any

from chute.errors import ChuteError, Problem

HEAD_BYTES = 64 * 1024
# Bytes that start files people pick by mistake instead of their CSV.
_MAGIC = {
    b"\x1f\x8b": "it is gzip-compressed",
    b"PK\x03\x04": "it is a ZIP archive (an .xlsx workbook is one)",
    b"%PDF": "it is a PDF document",
    b"PAR1": "it is a Parquet file",
}
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]
_CONTROL = {chr(c) for c in range(32)} - {"\t", "\n", "\r", "\f", "\v"}
# Text codecs (str to bytes) that are not the character encoding of a file: they rewrite
# the text (backslash escapes; UTF-7's "+" starts base64), encode domain names, or decode
# nothing at all. Python's other text codecs map bytes to characters, which is what a
# CSV file's encoding means. Names as `codecs.lookup` gives them.
_NOT_FILE_ENCODINGS = frozenset(
    {"undefined", "punycode", "idna", "unicode-escape", "raw-unicode-escape", "utf-7"}
)
_PROBE = 'id,name\r\n1,"a b"\n'


def check_encoding(name: str) -> str:
    """`name` if it names the text encoding of a file, else ValueError saying why.

    Bytes-to-bytes codecs (base64, hex, quopri, uu, zlib, bz2) and rot13 are not text
    encodings: decoding with them gives bytes, or inflates what an attacker sent. The
    rule is Python's own flag for text encodings, less the codecs above, and a probe:
    a short CSV, encoded and then decoded a byte at a time as a file is read in blocks,
    must come back unchanged.
    """
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError):
        raise ValueError(f"unknown encoding {name!r}") from None
    usable = info._is_text_encoding and info.name not in _NOT_FILE_ENCODINGS
    if usable:
        try:
            data = _PROBE.encode(info.name)
            decoder = info.incrementaldecoder()
            text = "".join(decoder.decode(data[i : i + 1]) for i in range(len(data)))
            usable = text + decoder.decode(b"", final=True) == _PROBE
        except Exception:  # the codec is third-party, or broken: refuse it
            usable = False
    if not usable:
        raise ValueError(
            f"{name!r} is not the character encoding of a text file "
            "(use one such as utf-8, latin-1, cp1252 or utf-16)"
        )
    return name


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte order mark at the start of `head` names, if there is one."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    return None


def sniff_encoding(head: bytes, whole_file: bool) -> str:
    """The encoding of a file that starts with `head`: its BOM's, else UTF-8 when the head
    decodes as UTF-8, else Latin-1 (any byte is a Latin-1 character)."""
    named = bom_encoding(head)
    if named is not None:
        return named
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, whole_file)
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def not_csv(why: str) -> ChuteError:
    return ChuteError(Problem.NOT_CSV, why=why)


class HeadKeeper:
    """Keeps a stream's first HEAD_BYTES, judging nothing (a tus partial upload's start,
    checked by `CsvStartCheck` once a final upload puts it first)."""

    def __init__(self) -> None:
        self.head = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]


class CsvStartCheck:
    """Feed it chunk 0's bytes in order, then call `finish`. Raises ChuteError (422)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.encoding: str | None = params.get("encoding")
        self.expect_header: bool = params.get("header", True) is not False
        self._head = bytearray()
        self._nul_ok = False
        self._decided = False

    def feed(self, data: bytes | bytearray) -> None:
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
            if not self._decided:
                if len(self._head) < 4:
                    return  # too early to tell UTF-16/32 (whose text has NULs) from binary
                self._decide_encoding()
                self._refuse_nul(self._head)  # what arrived before the decision, too
        self._refuse_nul(data)

    def _refuse_nul(self, data: bytes | bytearray) -> None:
        if not self._nul_ok and b"\x00" in data:
            raise not_csv("it contains NUL bytes, so it is binary, not text")

    def _decide_encoding(self) -> None:
        self._decided = True
        head = bytes(self._head)
        for magic, why in _MAGIC.items():
            if head.startswith(magic):
                raise not_csv(why)
        if self.encoding is not None:
            # Checked when the job was created; again here, so that a job stored before
            # that check (or by other means) gets a 422, never a decoder's exception.
            try:
                check_encoding(self.encoding)
            except ValueError as exc:
                raise not_csv(f"the job's encoding param: {exc}") from None
        else:
            self.encoding = bom_encoding(head)
        # UTF-16 and UTF-32 text is full of NUL bytes.
        self._nul_ok = self.encoding is not None and self.encoding.replace("-", "").lower()[:5] in (
            "utf16",
            "utf32",
        )

    def finish(self, whole_file: bool) -> None:
        """`whole_file`: chunk 0 is also the last, so the head may end anywhere."""
        if not self._decided:
            self._decide_encoding()
            self._refuse_nul(self._head)
        text = self._decode(whole_file)
        if not self.expect_header:
            return
        line, newline, _ = text.partition("\n")
        if not newline and not whole_file and len(self._head) >= HEAD_BYTES:
            raise not_csv(f"no line ends within the first {HEAD_BYTES // 1024} KiB")
        if not line.strip().lstrip("\ufeff"):
            raise not_csv("the first line, where the header belongs, is empty")

    def _decode(self, whole_file: bool) -> str:
        head = bytes(self._head)
        final = whole_file and len(head) < HEAD_BYTES
        if self.encoding is not None:
            try:
                return codecs.getincrementaldecoder(self.encoding)().decode(head, final)
            except UnicodeError:
                raise not_csv(f"it is not valid {self.encoding} text") from None
        try:
            return codecs.getincrementaldecoder("utf-8")().decode(head, final)
        except UnicodeDecodeError:
            pass
        # Not UTF-8: take it as a single-byte encoding if it reads as text.
        text = head.decode("latin-1")
        if any(ch in _CONTROL for ch in text):
            raise not_csv("it is neither UTF-8 nor single-byte text")
        return text
