"""The uploader as an application's front end uses it: the npm package, its types, a
React page built with Vite. The npm folders are installed by `make test` (`npm ci`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT
from tests.e2e.conftest import browser, playwright

__all__ = ["PACKAGE", "REACT", "TYPESCRIPT", "browser", "playwright", "run", "tool"]

PACKAGE = ROOT / "chute" / "web"
TYPESCRIPT = ROOT / "examples" / "typescript"
REACT = ROOT / "examples" / "react"


def tool(folder: Path, name: str) -> Path:
    """A command an example folder's `npm ci` installed."""
    path = folder / "node_modules" / ".bin" / name
    assert path.exists(), f"{path} is missing: run `npm ci` in {folder} (make test does)"
    return path


def run(
    *args: str | Path, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command, with `env` added to this process's environment."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
