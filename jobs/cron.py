"""Baton's durable timers for RQ's cron scheduler (`flask baton cron`)."""
from rq.cron import CronScheduler

from config import Settings
from runtime import queue_name

from .media import expire_media
from .timers import handoff_timers, sweep, tick

TICK_SECONDS = 1
SWEEP_SECONDS = 5
RETENTION_SECONDS = 3600


def register_timers(scheduler: CronScheduler, settings: Settings) -> None:
    queue = queue_name(settings, "default")
    scheduler.register(tick, queue_name=queue, interval=TICK_SECONDS, job_timeout=60, result_ttl=0)
    scheduler.register(handoff_timers, queue_name=queue, interval=TICK_SECONDS, job_timeout=60, result_ttl=0)
    scheduler.register(sweep, queue_name=queue, interval=SWEEP_SECONDS, job_timeout=300, result_ttl=0)
    scheduler.register(expire_media, queue_name=queue, interval=RETENTION_SECONDS, job_timeout=900, result_ttl=0)
