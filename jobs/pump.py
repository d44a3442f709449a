"""pump(lane, token): work through a lane's ready keys for a bounded time."""
from __future__ import annotations

import time
from contextlib import suppress

from models.base import connection_lost, discard_connection
from routing.drain import GROUP
from routing.lanes import PumpClaim
from routing.redis_wait import unreachable, wait_for_redis

from . import placement
from .context import job_logger, runtime, stopping
from .deliver import deliver_event
from .drain import drain
from .send import pump_outbound

log = job_logger(__name__)
DRAIN_GROUP = GROUP        # conversations one round of routing commits together
RETRY_FAILED_KEY_AFTER = 5.0
RETRY_LOST_DATABASE_AFTER = 1.0
UPKEEP_SECONDS = 0.25


def pump(lane: str, token: str, moves: int = 0) -> int:
    """Run the lane's handler on ready keys until none is left or the budget
    is spent (then hand over to a fresh job so other queues get a turn).

    A job that starts in a worker process already running a pump, while another
    process runs none, moves on (is queued again, its claim kept) up to
    placement.MAX_MOVES times: two pumps in one process share its GIL."""
    claim = PumpClaim(lane, token)
    try:
        rt = runtime()
    except Exception:
        # The database is unreachable: give the slot back at once (not after the
        # lease), so the cron tick starts a pump as soon as the database answers.
        with suppress(Exception):
            runtime(connect=False).lanes.release(claim)
        raise
    if moves < placement.MAX_MOVES and placement.leave_lanes_to_others(rt):
        rt.start_pump(claim, moves + 1)
        log.debug("pump %s moves on: this process runs a pump already", lane)
        return 0
    with placement.running_pump(rt):
        if lane == "outbound":
            return pump_outbound(claim)         # many conversations at once: see jobs/send.py
        return _pump_lane(rt, claim)


def _pump_lane(rt, claim: PumpClaim) -> int:
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
    started = time.monotonic()
    deadline = started + rt.settings.PUMP_BUDGET_SECONDS
    upkeep_due = started       # promote due retries and renew the lease now and then, not per key
    done = 0
    log.debug("pump %s started", lane)
    while True:
        if stopping():
            # The worker process is stopping: a fresh job (another worker's, or this
            # one's after its restart) carries on where this one leaves off.
            if rt.lanes.finish(claim):
                rt.start_pump(claim)
            log.debug("pump %s handed over after %d keys: the worker is stopping", lane, done)
            return done
        if time.monotonic() >= upkeep_due:
            rt.lanes.promote_due(lane)
            rt.lanes.renew(claim)
            upkeep_due = time.monotonic() + UPKEEP_SECONDS
        key = rt.lanes.pop(lane, wait=rt.settings.PUMP_LINGER, give_up=stopping)
        if key is None:
            if rt.lanes.finish(claim):
                continue
            log.debug("pump %s finished after %d keys", lane, done)
            return done
        # The inbound lane routes several conversations together (group commit,
        # routing.drain); the events lane delivers one delivery at a time.
        keys = [key] + rt.lanes.pop_many(lane, DRAIN_GROUP - 1) if lane == "inbound" else [key]
        failures = _work(lane, keys)
        if failures:
            _put_back(rt, claim, failures)
            raise next(iter(failures.values()))
        done += len(keys)
        if time.monotonic() > deadline:
            if rt.lanes.finish(claim):
                rt.start_pump(claim)
            return done


def _work(lane: str, keys: list[str]) -> dict[str, Exception]:
    """Run the lane's handler on `keys`; returns what failed, by key."""
    try:
        if lane == "inbound":
            return drain(keys)
        deliver_event(keys[0])
        return {}
    except Exception as exc:            # nothing tells which key it was: every one goes back
        return {key: exc for key in keys}


def _put_back(rt, claim: PumpClaim, failures: dict[str, Exception]) -> None:
    """The failed keys come back (nothing is lost): a lost database connection
    is dropped so the next job opens a fresh one, and retried sooner (it is the
    database coming back that is awaited, not a bug being fixed); Redis gone
    away is waited for, then the keys go back at once and the caller gives the
    slot back."""
    lane = claim.lane
    if any(unreachable(exc) for exc in failures.values()):
        if wait_for_redis(rt.redis, rt.settings.PUMP_LEASE):
            for key in failures:
                rt.lanes.schedule_at(lane, key, time.time())
        return
    for key, exc in failures.items():
        lost = connection_lost(exc)
        retry_after = RETRY_LOST_DATABASE_AFTER if lost else RETRY_FAILED_KEY_AFTER
        if lost:
            discard_connection()
            log.warning("pump %s: %s failed, the database is unreachable (%s); retrying it in %.0f s",
                        lane, key, exc, retry_after)
        else:
            log.error("pump %s: %s failed; retrying it in %.0f s", lane, key, retry_after, exc_info=exc)
        rt.lanes.schedule_at(lane, key, time.time() + retry_after)
    if rt.lanes.finish(claim):
        rt.start_pump(claim)
