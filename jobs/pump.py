"""pump(lane, token): work through a lane's ready keys for a bounded time."""
from __future__ import annotations

import time

from routing.lanes import PumpClaim

from .context import job_logger, runtime
from .deliver import deliver_event
from .drain import drain
from .send import pump_outbound

log = job_logger(__name__)
HANDLERS = {"inbound": drain, "events": deliver_event}
RETRY_FAILED_KEY_AFTER = 5.0
UPKEEP_SECONDS = 0.25


def pump(lane: str, token: str) -> int:
    """Run the lane's handler on ready keys until none is left or the budget
    is spent (then hand over to a fresh job so other queues get a turn)."""
    claim = PumpClaim(lane, token)
    if lane == "outbound":
        return pump_outbound(claim)         # many conversations at once: see jobs/send.py
    rt = runtime()
    handler = HANDLERS[lane]
    started = time.monotonic()
    deadline = started + rt.settings.PUMP_BUDGET_SECONDS
    upkeep_due = started       # promote due retries and renew the lease now and then, not per key
    done = 0
    log.debug("pump %s started", lane)
    while True:
        if time.monotonic() >= upkeep_due:
            rt.lanes.promote_due(lane)
            rt.lanes.renew(claim)
            upkeep_due = time.monotonic() + UPKEEP_SECONDS
        key = rt.lanes.pop(lane, wait=rt.settings.PUMP_LINGER)
        if key is None:
            if rt.lanes.finish(claim):
                continue
            log.debug("pump %s finished after %d keys", lane, done)
            return done
        try:
            handler(key)
        except Exception:
            log.exception("pump %s: %s failed; retrying it in %.0f s", lane, key, RETRY_FAILED_KEY_AFTER)
            rt.lanes.schedule_at(lane, key, time.time() + RETRY_FAILED_KEY_AFTER)
            if rt.lanes.finish(claim):
                rt.start_pump(claim)
            raise
        done += 1
        if time.monotonic() > deadline:
            if rt.lanes.finish(claim):
                rt.start_pump(claim)
            return done
