"""The worker-side Runtime, built once per worker process from the environment."""
from __future__ import annotations

import logging

from rq import get_current_job

_runtime = None


def runtime(connect: bool = True):
    """The process's Runtime; with `connect`, this thread's database connection
    is checked (and replaced when the database dropped it) first."""
    global _runtime
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


class _JobIdAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        job = get_current_job()
        return f"[job {job.id if job else '-'}] {msg}", kwargs


def job_logger(name: str) -> logging.LoggerAdapter:
    return _JobIdAdapter(logging.getLogger(name), {})
