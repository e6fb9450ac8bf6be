"""The chunk request's body: form fields, then the file part, with its length known
before the first byte, so it goes out with Content-Length and not chunked encoding.

The fields come first because the server then streams the file part straight into
place; a file part before the fields has to be spooled until they arrive.
"""

from __future__ import annotations

import secrets


def _quote(value: str) -> str:
    # A file name is the one free-form value here; keep it to one header line.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


class ChunkForm:
    """The bytes around a chunk: `head` (fields and part headers), then the chunk, then `tail`."""

    def __init__(self, fields: dict[str, str], file_name: str, chunk_length: int) -> None:
        self.boundary = "chute-" + secrets.token_hex(16)
        parts = []
        for name, value in fields.items():
            parts.append(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n"
            )
        parts.append(
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quote(file_name)}"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        )
        self.head = "".join(parts).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.length = len(self.head) + chunk_length + len(self.tail)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"
