"""Baton's durable timers for RQ's cron scheduler (`flask baton cron`)."""
import logging
import time

from redis.exceptions import RedisError
from rq import cron as rq_cron

from config import Settings
from runtime import queue_name

from . import fail_open
from .media import expire_media
from .retention import forget_old_records
from .timers import handoff_timers, sweep, tick

TICK_SECONDS = 1
SWEEP_SECONDS = 5
RETENTION_SECONDS = 3600
REDIS_RETRY_SECONDS = 1.0
log = logging.getLogger(__name__)


class CronScheduler(rq_cron.CronScheduler):
    """RQ's cron scheduler, surviving a Redis outage: RQ's own ends its process on
    the first Redis error. A timer that could not be enqueued is enqueued on a
    later round (its last enqueue time was not moved), and the timers catch up
    from the database once Redis answers again."""

    def enqueue_jobs(self):
        try:
            return super().enqueue_jobs()
        except RedisError as exc:
            log.warning("cron: cannot enqueue timers, Redis is unreachable (%s)", exc)
            time.sleep(REDIS_RETRY_SECONDS)        # the timers are overdue: do not spin on them
            return []

    def save(self, *args, **kwargs):
        try:
            return super().save(*args, **kwargs)
        except RedisError as exc:
            log.warning("cron: cannot save its state, Redis is unreachable (%s)", exc)

    def heartbeat(self):
        try:
            return super().heartbeat()
        except RedisError as exc:
            log.warning("cron: cannot send its heartbeat, Redis is unreachable (%s)", exc)


def register_timers(scheduler: rq_cron.CronScheduler, settings: Settings) -> None:
    queue = queue_name(settings, "default")
    scheduler.register(tick, queue_name=queue, interval=TICK_SECONDS, job_timeout=60, result_ttl=0)
    scheduler.register(fail_open.tick, queue_name=queue, interval=TICK_SECONDS, job_timeout=60, result_ttl=0)
    scheduler.register(handoff_timers, queue_name=queue, interval=TICK_SECONDS, job_timeout=60, result_ttl=0)
    scheduler.register(sweep, queue_name=queue, interval=SWEEP_SECONDS, job_timeout=300, result_ttl=0)
    scheduler.register(expire_media, queue_name=queue, interval=RETENTION_SECONDS, job_timeout=900, result_ttl=0)
    scheduler.register(forget_old_records, queue_name=queue, interval=RETENTION_SECONDS, job_timeout=300,
                       result_ttl=0)
