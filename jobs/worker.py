"""The RQ worker loop (`flask baton worker`), kept alive through Redis outages.

RQ's worker quits on a Redis error it meets outside dequeueing (recording a
job's result, its heartbeat) and on a Redis timeout; under a process manager
that stops the whole stack (honcho) or leaves the worker dead. Here a worker
that stopped without being asked to waits and starts again with a fresh
SimpleWorker: the jobs it held are pumps, whose slots lapse with their lease
and whose keys stay in their lanes, and timers, which the cron enqueues again.
"""
from __future__ import annotations

import logging
import time

from rq import SimpleWorker
from rq.worker import DequeueStrategy

from runtime import MEDIA_QUEUE

log = logging.getLogger(__name__)
RESTART_DELAYS = (0.5, 1.0, 2.0)
# RQ waits up to 60 s between attempts to reach Redis while dequeueing: after an
# outage its workers would idle that long with work waiting.
REDIS_RETRY_CAP_SECONDS = 2.0


class Worker(SimpleWorker):
    """SimpleWorker (jobs run in this process), trying Redis again every 2 s at most."""

    max_connection_wait_time = REDIS_RETRY_CAP_SECONDS


def run_worker(rt, *, burst: bool = False, logging_level: str = "WARNING", queue_names=()) -> None:
    """Work Baton's queues (all of them, or only `queue_names`) until asked to stop;
    a worker that stops on its own (Redis went away) is started again."""
    queues = [rt.queues[name] for name in ("inbound", "outbound", "events", MEDIA_QUEUE, "default")
              if not queue_names or name in queue_names]
    attempt = 0
    while True:
        worker = None
        started = time.monotonic()
        try:
            worker = Worker(queues, connection=rt.redis)      # names itself in Redis
            # Round robin: a busy inbound lane hands its pump over again and again;
            # with the default priority order the outbound lane would never get a turn.
            worker.work(burst=burst, logging_level=logging_level, dequeue_strategy=DequeueStrategy.ROUND_ROBIN)
        except Exception:           # registering the worker itself failed: Redis is down
            log.warning("the RQ worker could not start", exc_info=True)
        if burst or (worker is not None and (worker._stop_requested
                                             or worker._shutdown_requested_date is not None)):
            return
        if time.monotonic() - started > 60:
            attempt = 0
        delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
        attempt += 1
        log.warning("the RQ worker stopped without being asked to (Redis unreachable?); starting again in %.1f s",
                    delay)
        time.sleep(delay)
