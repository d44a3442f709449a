"""pump(lane, token): work through a lane's ready keys for a bounded time."""
from __future__ import annotations

import time
from contextlib import suppress

from models.base import connection_lost, discard_connection
from routing.lanes import PumpClaim
from routing.redis_wait import unreachable, wait_for_redis

from .context import job_logger, runtime
from .deliver import deliver_event
from .drain import drain
from .send import pump_outbound

log = job_logger(__name__)
HANDLERS = {"inbound": drain, "events": deliver_event}
RETRY_FAILED_KEY_AFTER = 5.0
RETRY_LOST_DATABASE_AFTER = 1.0
UPKEEP_SECONDS = 0.25


def pump(lane: str, token: str) -> int:
    """Run the lane's handler on ready keys until none is left or the budget
    is spent (then hand over to a fresh job so other queues get a turn)."""
    claim = PumpClaim(lane, token)
    try:
        rt = runtime()
    except Exception:
        # The database is unreachable: give the slot back at once (not after the
        # lease), so the cron tick starts a pump as soon as the database answers.
        with suppress(Exception):
            runtime(connect=False).lanes.release(claim)
        raise
    if lane == "outbound":
        return pump_outbound(claim)         # many conversations at once: see jobs/send.py
    try:
        return _pump(rt, claim)
    except Exception as exc:
        if not unreachable(exc):
            raise
        # Redis went away mid-pump: once it is back, give the slot back at once so
        # the cron tick starts a pump now, not when this one's lease runs out.
        if wait_for_redis(rt.redis, rt.settings.PUMP_LEASE):
            with suppress(Exception):
                rt.lanes.release(claim)
        raise


def _pump(rt, claim: PumpClaim) -> int:
    lane = claim.lane
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
        except Exception as exc:
            # The key comes back (nothing is lost); a lost database connection is
            # dropped so the next job opens a fresh one, and retried sooner: it
            # is the database coming back that is awaited, not a bug being fixed.
            if unreachable(exc):
                # Redis went away: once it is back the key goes back at once, and
                # the caller gives the slot back.
                if wait_for_redis(rt.redis, rt.settings.PUMP_LEASE):
                    rt.lanes.schedule_at(lane, key, time.time())
                raise
            lost = connection_lost(exc)
            retry_after = RETRY_LOST_DATABASE_AFTER if lost else RETRY_FAILED_KEY_AFTER
            if lost:
                discard_connection()
                log.warning("pump %s: %s failed, the database is unreachable (%s); retrying it in %.0f s",
                            lane, key, exc, retry_after)
            else:
                log.exception("pump %s: %s failed; retrying it in %.0f s", lane, key, retry_after)
            rt.lanes.schedule_at(lane, key, time.time() + retry_after)
            if rt.lanes.finish(claim):
                rt.start_pump(claim)
            raise
        done += 1
        if time.monotonic() > deadline:
            if rt.lanes.finish(claim):
                rt.start_pump(claim)
            return done
