"""`chute worker`: a Huey consumer running jobs, one sending webhooks on threads of
its own (a receiver that hangs never holds a job's thread), and the sweeper beside them."""

from __future__ import annotations

import logging

from huey.consumer import Consumer

from chute.config import Settings
from chute.jobs.isolation import start_spare
from chute.jobs.runner import run_job
from chute.jobs.sweeper import Sweeper, remove_stale_scratch
from chute.logs import configure
from chute.runtime import build_runtime


def run_worker(settings: Settings, threads: int = 2) -> None:
    configure(settings.log_format)
    rt = build_runtime(settings, handler=run_job)
    # What runs of a worker that was killed left here (a whole copy of a job's input,
    # maybe); folders of runs live in other workers sharing this data dir are kept.
    try:
        remove_stale_scratch(rt)
    except Exception:  # the sweeper tries again; this is no reason not to start
        logging.getLogger(__name__).exception("removing stale scratch folders failed")
    start_spare()  # the first job's process, started while the worker waits
    sweeper = Sweeper(rt)
    sweeper.start()
    consumer = Consumer(
        rt.queue.huey,
        workers=threads,
        worker_type="thread",
        periodic=False,
        # Poll the SQLite queue at least twice a second when idle (Redis blocks instead).
        initial_delay=0.05,
        backoff=1.5,
        max_delay=0.5,
    )
    hooks = Consumer(
        rt.webhooks.huey,
        workers=rt.settings.webhook_threads,
        worker_type="thread",
        periodic=False,
        initial_delay=0.05,
        backoff=1.5,
        max_delay=0.5,
    )
    # Started first: `start` sets signal handlers, and the jobs consumer's `run` sets its
    # own after, which stop the process.
    hooks.start()
    try:
        consumer.run()
    finally:
        hooks.stop()
        sweeper.stop()
        rt.close()
