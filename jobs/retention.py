"""The retention job: run by the cron every RETENTION_SECONDS (hourly), it
deletes what the RETENTION_DAYS_* settings no longer keep, in small batches,
and the spool's dead entries (raw webhooks) after RETENTION_DAYS_UNSUPPORTED."""
from __future__ import annotations

from routing.retention import forget_old_records as forget

from .context import job_logger, runtime

log = job_logger(__name__)


def forget_old_records() -> dict[str, int]:
    rt = runtime()
    try:
        deleted = forget(rt.settings)
        days = rt.settings.RETENTION_DAYS_UNSUPPORTED
        if days > 0:     # spooled webhooks that could not be recorded: raw bodies, like unsupported updates
            deleted["spool_dead_entries"] = rt.spool.forget_dead(days * 86400)
    except Exception:
        log.exception("retention failed")
        raise
    log.info("retention: %s", deleted or "nothing to forget")
    return deleted
