"""An example job kind, installed for the tests as the plugin `chute-example`.

It counts the lines of the uploaded file. For the tests of the job engine it can also
take its time (`seconds`), note each run's start and end in a journal file, and
crash its process (`crash`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def count_lines(input: Path, params: dict[str, Any], progress: Any) -> dict[str, Any]:
    journal = params.get("journal")
    if journal:
        with open(journal, "a") as f:
            f.write(f"start {os.getpid()}\n")
    if params.get("crash"):
        os._exit(3)  # as a crash in native code would end the process
    seconds = float(params.get("seconds", 0))
    steps = max(1, int(seconds * 10))
    for step in range(steps):
        progress(100 * step / steps)  # raises when the job is cancelled
        time.sleep(seconds / steps)
    with input.open("rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    if journal:
        with open(journal, "a") as f:
            f.write(f"end {os.getpid()}\n")
    return {"lines": lines}
