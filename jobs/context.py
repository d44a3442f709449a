"""The worker-side Runtime, built once per worker process from the environment
and shared by its worker threads, and whether the process is stopping."""
from __future__ import annotations

import logging
import threading

from rq import get_current_job

_runtime = None
_build_lock = threading.Lock()
_stopping = threading.Event()


def runtime(connect: bool = True):
    """The process's Runtime; with `connect`, this thread's database connection
    is checked (and replaced when the database dropped it) first."""
    global _runtime
    if _runtime is None:
        with _build_lock:            # worker threads share one Runtime
            if _runtime is None:
                from config import load_settings
                from runtime import Runtime

                _runtime = Runtime.build(load_settings())
    if not connect:
        return _runtime
    from models.base import ensure_connection

    # A worker keeps its connection from job to job; one the database dropped
    # (a restart, a network cut) is replaced here, not reused for ever.
    ensure_connection()
    return _runtime


def set_runtime(rt) -> None:
    """Tests and in-process workers share the app's runtime."""
    global _runtime
    _runtime = rt


def stopping() -> bool:
    """Has this worker process been asked to stop (SIGTERM/SIGINT)? A pump then
    hands its lane over to a fresh job at once instead of draining on."""
    return _stopping.is_set()


def request_stop() -> None:
    _stopping.set()


def wait_for_stop(seconds: float) -> bool:
    """Sleep up to `seconds`, less when the process is asked to stop meanwhile."""
    return _stopping.wait(seconds)


class _JobIdAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        job = get_current_job()
        return f"[job {job.id if job else '-'}] {msg}", kwargs


def job_logger(name: str) -> logging.LoggerAdapter:
    return _JobIdAdapter(logging.getLogger(name), {})
