"""`GET /healthz` and `GET /readyz`, for load balancers and supervisors (DESIGN §8).

/healthz answers while the process's event loop runs. /readyz also asks the database,
the storage and the queue, each in a thread of its own pool, and answers 503 naming
what did not answer within CHECK_TIMEOUT. A check still running (a dependency that
hangs) is awaited again by the next probe, never started twice, so probes cannot pile
up threads, and the upload threads are never used. Both are public: they say only
which part is not ready, never why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from chute.api.deps import RuntimeDep
from chute.errors import ChuteError, Problem
from chute.runtime import Runtime
from chute.storage import StorageFull

router = APIRouter(tags=["health"])

# Seconds a probe waits for each part; load balancers commonly give a probe 5 s.
CHECK_TIMEOUT = 2.0


class Checks:
    """The readiness checks of one process, each run at most once at a time."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="chute-ready")
        self._running: dict[str, asyncio.Future[None]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def failing(self, rt: Runtime) -> list[str]:
        parts: dict[str, Callable[[], None]] = {
            "database": lambda: _ask_database(rt),
            "storage": lambda: _ask_storage(rt),
            "queue": rt.queue.check_ready,
        }
        answers = await asyncio.gather(*(self._answers(n, fn) for n, fn in parts.items()))
        return [name for name, ok in zip(parts, answers, strict=True) if not ok]

    async def _answers(self, name: str, check: Callable[[], None]) -> bool:
        running = self._running.get(name)
        if running is None:
            running = asyncio.get_running_loop().run_in_executor(self._pool, check)
            self._running[name] = running
            running.add_done_callback(lambda _: self._running.pop(name, None))
        try:
            await asyncio.wait_for(asyncio.shield(running), CHECK_TIMEOUT)
        except Exception:  # a timeout or the part's own error: either way, not ready
            return False
        return True


def _ask_storage(rt: Runtime) -> None:
    free = rt.storage.check_ready()
    # A full disk takes no upload (507): this instance should get none.
    if free is not None and free < rt.settings.min_free_bytes:
        raise StorageFull(f"{free} bytes free")


def _ask_database(rt: Runtime) -> None:
    with rt.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def install(app: FastAPI) -> Checks:
    checks = Checks()
    app.include_router(router)
    app.state.checks = checks
    return checks


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(rt: RuntimeDep, request: Request) -> JSONResponse:
    checks: Checks = request.app.state.checks
    failing = await checks.failing(rt)
    if failing:
        problem = ChuteError(Problem.NOT_READY, parts=", ".join(failing))
        # The parts by name too, for a monitor to read without parsing words.
        answer = JSONResponse({"detail": problem.detail, "failing": failing}, status_code=503)
    else:
        answer = JSONResponse({"status": "ready"})
    answer.headers["Cache-Control"] = "no-store"
    return answer
