"""The worker-side Runtime, built once per worker process from the environment."""
from __future__ import annotations

import logging

from rq import get_current_job

_runtime = None


def runtime():
    global _runtime
    if _runtime is None:
        from config import load_settings
        from runtime import Runtime

        _runtime = Runtime.build(load_settings())
    from models import db

    db.connect(reuse_if_open=True)
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
