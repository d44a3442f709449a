"""RQ cron configuration, loaded by `rq cron jobs/cron.py` (see Procfile)."""
from rq import cron

from config import load_settings
from jobs.timers import sweep, tick
from runtime import queue_name

_queue = queue_name(load_settings(), "default")

cron.register(tick, queue_name=_queue, interval=1, job_timeout=60, result_ttl=0)
cron.register(sweep, queue_name=_queue, interval=5, job_timeout=300, result_ttl=0)
