"""What every protocol adapter does with the events it read: queue them for the one writer,
wait for their commit, count them in the metrics, and answer.

Adapters (Elasticsearch bulk, OTLP, CloudEvents, NDJSON) read their own formats and call
`store_rows`; nothing here knows a format. Those that answer like `POST /publish` use
`publish_answer`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence
from concurrent.futures import Future

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from logagg.http.body import Parsed, publish_document
from logagg.http.service import Service, committed
from logagg.models import Row
from logagg.store import BatchResult

logger = logging.getLogger("logagg.serve")

RETRY_AFTER_SECONDS = 1


class QueueFull(Exception):
    """The write queue stayed full for the service's queue timeout; nothing was queued."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the write queue stayed full for {seconds:g} s; nothing was stored, retry later"
        )


async def store_rows(
    service: Service, rows: Sequence[Row], invalid: int = 0, *, each: bool = False
) -> BatchResult:
    """Queue `rows` (and a count of `invalid` events) and return once they are committed.

    `each`: the result's `per_batch` holds, for every row in order, 1 when it was stored
    now and 0 for a duplicate. Raises QueueFull when no room came in the queue in time,
    WriterDown while the writer cannot write (what was queued may still be committed:
    a re-send is safe) and StoreError once it has stopped.
    """
    if not rows and not invalid:
        return BatchResult(0, 0, 0)
    deadline = time.monotonic() + service.queue_timeout
    try:
        future = await run_in_threadpool(_submit, service, rows, invalid, deadline, each)
    except queue.Full:
        logger.warning("the write queue stayed full for %g s: 503", service.queue_timeout)
        raise QueueFull(service.queue_timeout) from None
    result = await committed(future, service.check)
    service.metrics.events(len(rows) + invalid, result)
    return result


def _submit(
    service: Service, rows: Sequence[Row], invalid: int, deadline: float, each: bool
) -> Future[BatchResult]:
    service.check()
    timeout = max(0.0, deadline - time.monotonic())
    return service.writer.submit(rows, invalid, timeout=timeout, each=each)


async def publish_answer(service: Service, parsed: Parsed) -> JSONResponse:
    """Store a body read as `POST /publish` reads it, and answer as it does (status and
    counts; see body.publish_document). QueueFull is a 503 with Retry-After."""
    try:
        result = await store_rows(service, parsed.rows, len(parsed.errors))
    except QueueFull as exc:
        raise HTTPException(
            503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from None
    status, doc = publish_document(parsed, result)
    return JSONResponse(doc, status_code=status)
