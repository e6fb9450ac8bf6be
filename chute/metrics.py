"""Chute's Prometheus metrics (DESIGN §8): what each process counts, and what a scrape reads.

Counted where it happens, once for both upload protocols: bytes and chunks in the upload
core's record (`chute.upload.core.record_parts`), refusals at the upload routes
(`chute.api.metrics`), requests by one ASGI middleware, job runs where a worker ends them
(`chute.jobs.runner`), expired uploads where the sweeper marks them (in the core too).

Several processes count: `chute serve --workers N` runs N API processes, and beside them
the embedded deployment's worker. `chute serve` gives them all one new directory in
`PROMETHEUS_MULTIPROC_DIR` (`chute.serve.metrics_dir`) before any of them imports this
module: prometheus_client reads the variable once, at import, and then keeps each
process's figures in files there; a scrape, in whichever process the kernel hands it to,
adds them all up. Without the variable (a `chute worker` on a host of its own, an app
built in a test) a process counts for itself alone.

The metric objects are module-level, as prometheus_client's multi-process mode wants
them: the files are per process, not per app. Only counters and histograms are kept
there, so a process that ends leaves nothing to mark dead: its counts stay in the sums,
as a counter's must. The job and queue gauges are no process's figures at all:
`DatabaseCollector` reads them from the database at scrape time, so they are right
whatever the deployment and wherever its workers run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chute.db.models import Job, JobStatus, utcnow

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format: every Prometheus server and the client's own parser read it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# The label of a request that no route matched: raw paths would be unbounded.
UNMATCHED = "unmatched"

# From a status request (milliseconds) to a 100 MiB chunk on a slow link (minutes).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# From a small file's profile (a second) to a large one's (hours).
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)

# Metrics of this process, not of the default registry: a scrape shows Chute's alone.
REGISTRY = CollectorRegistry(auto_describe=True)

UPLOAD_BYTES = Counter(
    "chute_upload_bytes_received",
    "Bytes of upload parts recorded into jobs' uploads, stored and verified (both protocols).",
    registry=REGISTRY,
)
CHUNKS_RECORDED = Counter(
    "chute_upload_chunks_recorded",
    "Upload parts recorded (chunks of the chunk endpoint, tus parts); a re-send is not counted.",
    registry=REGISTRY,
)
CHUNKS_REFUSED = Counter(
    "chute_upload_chunks_refused",
    "Upload requests (upload-data, tus creation and PATCH) refused, by the problem that "
    "refused them.",
    ["reason"],
    registry=REGISTRY,
)
UPLOADS_COMPLETED = Counter(
    "chute_uploads_completed",
    "Uploads completed: their jobs were queued.",
    registry=REGISTRY,
)
UPLOADS_EXPIRED = Counter(
    "chute_uploads_expired",
    "Unfinished uploads removed by the sweeper; their jobs are upload_expired.",
    registry=REGISTRY,
)
REQUESTS = Counter(
    "chute_http_requests",
    "HTTP requests answered, by route (its path template), method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "chute_http_request_duration_seconds",
    "Seconds from a request's start to the end of its answer, by route, method and status.",
    ["route", "method", "status"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "chute_job_run_duration_seconds",
    "Seconds a worker's run of a job took, from its claim to its final status, by kind and "
    "final status; its _count is the jobs run to that status.",
    ["kind", "status"],
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)


def parts_recorded(sizes: Sequence[int], completed: bool) -> None:
    """Parts of `sizes` bytes were recorded in one commit, which completed the upload or not."""
    CHUNKS_RECORDED.inc(len(sizes))
    UPLOAD_BYTES.inc(sum(sizes))
    if completed:
        UPLOADS_COMPLETED.inc()


def upload_expired() -> None:
    UPLOADS_EXPIRED.inc()


def chunk_refused(reason: str) -> None:
    """`reason`: a `Problem`'s name, or another name from a fixed set."""
    CHUNKS_REFUSED.labels(reason).inc()


def request_answered(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    REQUEST_SECONDS.labels(route, method, str(status)).observe(seconds)


def job_run_ended(kind: str, status: str, seconds: float) -> None:
    JOB_SECONDS.labels(kind, status).observe(seconds)


class DatabaseCollector(Collector):
    """Jobs by kind and status, the queue's depth and its oldest job's age, read from the
    database at each scrape. A job's `updated_at` is when it last changed status, so for
    a queued job it is when it was queued (or queued again after its worker was lost)."""

    def __init__(self, sessions: Callable[[], Session], kinds: Iterable[str] = ()) -> None:
        self.sessions = sessions
        # Shown at 0 in every status while they have no job, so a series never appears
        # out of nowhere (a first failure is then a change from 0, not a new series).
        self.kinds = sorted(kinds)

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = session.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
            ).all()
            oldest = session.scalar(
                select(func.min(Job.updated_at)).where(Job.status == JobStatus.QUEUED)
            )
        jobs = GaugeMetricFamily(
            "chute_jobs", "Jobs in the database, by kind and status.", labels=["kind", "status"]
        )
        by_label = {(kind, status.value): 0 for kind in self.kinds for status in JobStatus}
        for kind, status, count in counts:
            by_label[kind, JobStatus(status).value] = count
        for labels, count in sorted(by_label.items()):
            jobs.add_metric(list(labels), count)
        yield jobs
        queued = sum(n for (_, status), n in by_label.items() if status == JobStatus.QUEUED)
        yield GaugeMetricFamily("chute_queue_depth", "Jobs queued, not yet running.", queued)
        age = 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
        yield GaugeMetricFamily(
            "chute_queue_oldest_age_seconds",
            "Seconds the longest-queued job has waited (0 when none waits).",
            age,
        )


def exposition(*collectors: Collector) -> bytes:
    """The text a scrape answers: every process's figures (or this one's), then `collectors`."""
    registry = CollectorRegistry()
    registry.register(processes())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def processes() -> Collector:
    """The figures of every process sharing this one's PROMETHEUS_MULTIPROC_DIR, or, without
    it, of this process alone."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def serve_on_port(host: str, port: int) -> None:
    """Answer scrapes of `processes()` on a port of their own, from a thread (`chute worker
    --metrics-port`: a worker on a host of its own, whose figures no API process sees)."""
    start_http_server(port, addr=host, registry=processes())
