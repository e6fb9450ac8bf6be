"""tuspyserver (PyPI) as a peer for bench/tus_bench.py: its FastAPI router alone, on
local disk, under uvicorn with the settings `chute serve` uses, so only the app differs.

    python bench/tus/tuspy_server.py --port 8002 --dir /path/on/chutes/disk

Uploads go to `<dir>/<id>` (the router's own layout, its default local storage), under
the creation URL `/files/`.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve tuspyserver's tus router alone.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True, help="where the uploads are stored")
    args = parser.parse_args()
    app = FastAPI()
    app.include_router(create_tus_router(prefix="files", files_dir=args.dir))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        proxy_headers=False,
        log_level="info",
    )


if __name__ == "__main__":
    main()
