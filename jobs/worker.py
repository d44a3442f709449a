"""The RQ workers of `flask baton worker`: WORKER_THREADS of them in one process,
each kept alive through Redis outages.

Why threads. A pump drains its lane for up to PUMP_BUDGET_SECONDS and lingers
PUMP_LINGER for more; one RQ worker runs one job at a time, so with a single
worker the inbound pump made the outbound and events lanes wait behind it
(about 170 ms for one message at idle). Here each thread is a SimpleWorker of
its own, so every lane's pump, the timers and a media download each get a
worker at once, whatever the others do. The jobs are unchanged (ids in,
leases in Redis, state in the database): what a thread does is exactly what
a worker process did.

What threads change, and how it is handled:
- Signals reach the main thread only. It does no jobs: it installs the
  SIGTERM/SIGINT handlers and waits for the threads. The first signal is a
  warm shutdown: every thread finishes its current job (a pump hands its lane
  over to a fresh job at once, see jobs.context.stopping) and an idle one stops
  within IDLE_POLL_SECONDS; a second signal (more than a second later) is a cold one, like a kill -9
  (leases and the cron recover what was in flight).
- A job's timeout is a timer raising in the job's thread (RQ's
  TimerDeathPenalty), not SIGALRM, which only the main thread receives.
- Each thread registers as a worker of its own in Redis (its own name,
  heartbeat and command channel), so `rq info` counts threads.
- Database connections are per thread (peewee keeps one per thread; on
  PostgreSQL each comes from the process's pool, DATABASE_POOL_SIZE); the
  Runtime (Redis client, lanes, adapter) is shared and thread-safe.

RQ's worker quits on a Redis error it meets outside dequeueing (recording a
job's result, its heartbeat) and on a Redis timeout; under a process manager
that stops the whole stack (honcho) or leaves the worker dead. Here a thread
whose worker stopped without being asked to waits and starts again with a
fresh SimpleWorker: the jobs it held are pumps, whose slots lapse with their
lease and whose keys stay in their lanes, and timers, which the cron enqueues
again.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.timeouts import TimerDeathPenalty
from rq.worker import DequeueStrategy

from runtime import MEDIA_QUEUE

from . import placement
from .context import request_stop, stopping, wait_for_stop

log = logging.getLogger(__name__)
RESTART_DELAYS = (0.5, 1.0, 2.0)
# RQ waits up to 60 s between attempts to reach Redis while dequeueing: after an
# outage its workers would idle that long with work waiting.
REDIS_RETRY_CAP_SECONDS = 2.0
# An idle thread looks up from waiting for a job this often, to see whether the
# process is stopping (only the main thread hears the signal).
IDLE_POLL_SECONDS = 1
# Ctrl+C under honcho: the terminal's SIGINT and honcho's SIGTERM arrive together and
# mean one warm shutdown; a second request this soon is not a cold one (RQ does the same).
SIGNAL_ECHO_SECONDS = 1.0


class Worker(SimpleWorker):
    """SimpleWorker (jobs run in this thread), trying Redis again every 2 s at most,
    stopped by the process's main thread rather than by signals of its own."""

    max_connection_wait_time = REDIS_RETRY_CAP_SECONDS
    death_penalty_class = TimerDeathPenalty

    @property
    def dequeue_timeout(self) -> int:
        # RQ also sizes the Redis socket timeout from it (+10 s): 11 s, not 415.
        return IDLE_POLL_SECONDS

    def _install_signal_handlers(self):
        """Only the main thread may; it stops every worker thread (run_worker)."""

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Wait for a job as RQ does, but a second at a time, stopping when asked to."""
        if timeout is None or max_idle_time is not None:       # burst, or RQ's own idle limit
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while not stopping():
            every = self._ordered_queues
            rt = getattr(self, "rt", None)
            # A process already running a pump leaves the lanes to one running none (jobs/placement.py).
            listen = placement.queues_to_listen(rt, every) if rt is not None else every
            narrowed = listen is not every
            if narrowed:
                self._ordered_queues = listen
            try:
                result = super().dequeue_job_and_maintain_ttl(IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)
            finally:
                if narrowed:            # the lanes' turn in the round robin is kept
                    self._ordered_queues = every
            if result is not None:
                return result
        raise StopRequested()


class WorkerThread(threading.Thread):
    """One RQ worker, started again when it stops without being asked to."""

    def __init__(self, rt, queues, index: int, *, burst: bool, logging_level: str):
        super().__init__(name=f"rq-worker-{index}", daemon=True)
        self.rt, self.queues, self.burst, self.logging_level = rt, queues, burst, logging_level

    def run(self) -> None:
        attempt = 0
        while not stopping():
            started = time.monotonic()
            try:
                worker = Worker(self.queues, connection=self.rt.redis)      # names itself in Redis
                worker.rt = self.rt
                # Round robin: a busy inbound lane hands its pump over again and again;
                # with the default priority order the outbound lane would never get a turn.
                worker.work(burst=self.burst, logging_level=self.logging_level,
                            dequeue_strategy=DequeueStrategy.ROUND_ROBIN)
            except Exception:           # registering the worker itself failed: Redis is down
                log.warning("the RQ worker could not start", exc_info=True)
            if self.burst or stopping():
                return
            if time.monotonic() - started > 60:
                attempt = 0
            delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
            attempt += 1
            log.warning("the RQ worker stopped without being asked to (Redis unreachable?); starting again "
                        "in %.1f s", delay)
            wait_for_stop(delay)


def run_worker(rt, *, threads: int = 1, burst: bool = False, logging_level: str = "WARNING",
               queue_names=()) -> None:
    """Work Baton's queues (all of them, or only `queue_names`) on `threads` RQ
    workers until asked to stop (SIGTERM/SIGINT) or, with `burst`, until the
    queues are empty."""
    queues = [rt.queues[name] for name in ("inbound", "outbound", "events", MEDIA_QUEUE, "default")
              if not queue_names or name in queue_names]
    workers = [WorkerThread(rt, queues, i, burst=burst, logging_level=logging_level) for i in range(threads)]

    asked_at: list[float] = []

    def on_signal(signum, frame):
        if asked_at and time.monotonic() - asked_at[0] < SIGNAL_ECHO_SECONDS:
            return      # honcho's SIGTERM right after the terminal's SIGINT is the same request
        if stopping():
            log.warning("cold shut down (%s again): jobs in flight are left to their leases",
                        signal.Signals(signum).name)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(1)
        log.warning("warm shut down (%s): %d worker thread(s) finish their jobs; send it again to stop at once",
                    signal.Signals(signum).name, sum(w.is_alive() for w in workers))
        asked_at.append(time.monotonic())
        request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            while worker.is_alive():
                worker.join(timeout=1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
