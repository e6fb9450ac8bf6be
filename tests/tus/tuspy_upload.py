"""tuspy (the tus project's Python client, pinned in pyproject.toml) sending one file as a
user's script would, for tests/tus/test_tuspy.py:

    python tests/tus/tuspy_upload.py '<options as JSON>'

Options: `endpoint`, `headers`, `file`, `chunk_size`, `metadata`, `urls` (tuspy's
FileStorage file: a second run finds the first run's upload there by the file's fingerprint
and resumes it), `stop_at` (stop once this many bytes are uploaded). Every PATCH carries
tuspy's `Upload-Checksum` (sha1). Prints one JSON line: the URL and offset the uploader
found on start (`null` and 0 for a new upload), and its URL and offset at the end.
"""

from __future__ import annotations

import json
import sys

from tusclient.client import TusClient
from tusclient.storage.filestorage import FileStorage


def main() -> None:
    options = json.loads(sys.argv[1])
    storage = FileStorage(options["urls"])
    try:
        uploader = TusClient(options["endpoint"], headers=options["headers"]).uploader(
            options["file"],
            chunk_size=options["chunk_size"],
            metadata=options["metadata"],
            store_url=True,
            url_storage=storage,
            upload_checksum=True,
        )
        found = {"found_url": uploader.url, "found_offset": uploader.offset}
        uploader.upload(stop_at=options.get("stop_at"))
        print(json.dumps({**found, "url": uploader.url, "offset": uploader.offset}))
    finally:
        storage.close()


if __name__ == "__main__":
    main()
