"""The retention job: run by the cron every RETENTION_SECONDS (hourly), it
deletes what the RETENTION_DAYS_* settings no longer keep, in small batches."""
from __future__ import annotations

from routing.retention import forget_old_records as forget

from .context import job_logger, runtime

log = job_logger(__name__)


def forget_old_records() -> dict[str, int]:
    rt = runtime()
    try:
        deleted = forget(rt.settings)
    except Exception:
        log.exception("retention failed")
        raise
    log.info("retention: %s", deleted or "nothing to forget")
    return deleted
