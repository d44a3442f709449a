"""Fail open (invariant 9): the spool's replay and the maintenance notices.

None of these need the database to start: they run while it is down.

tick()                        — every second (RQ cron): enqueue the maintenance notices
                                that are due (retries, lost jobs); replay the spool
                                when it holds entries and the database answers.
replay_spool()                — replay now (a web process's breaker closed again).
send_notice(pnid, address)    — send MAINTENANCE_NOTICE to one customer, through the
                                provider adapter directly (no database row).
"""
from __future__ import annotations

from integrations.whatsapp.base import OutboundMessage
from models.base import discard_connection
from routing.spool import replay, unavailable

from .context import job_logger, runtime

log = job_logger(__name__)
REPLAY_BUDGET_SECONDS = 5.0


def tick() -> dict:
    rt = runtime(connect=False)
    outcome = {"notices": 0, "replayed": 0}
    for phone_number_id, address in rt.notices.claim_due():
        rt.enqueue_notice(phone_number_id, address)
        outcome["notices"] += 1
    if rt.spool.length():
        try:
            outcome["replayed"] = replay(rt, REPLAY_BUDGET_SECONDS)["replayed"]
        except Exception as exc:
            if not unavailable(exc):
                raise
            discard_connection()
            log.info("spool waits: the database is still unreachable (%s)", exc)
    return outcome


def replay_spool() -> dict:
    rt = runtime(connect=False)
    counts = replay(rt, REPLAY_BUDGET_SECONDS)
    log.info("spool replay: %s", counts)
    if rt.spool.length() and not counts["locked"]:
        rt.replay_spool_soon()      # the budget ran out: go on in a fresh job
    return counts


def send_notice(phone_number_id: str, address: str) -> str:
    rt = runtime(connect=False)
    try:
        rt.adapter.send(OutboundMessage(to=address, phone_number_id=phone_number_id,
                                        text=rt.settings.MAINTENANCE_NOTICE))
    except Exception as exc:
        delay = rt.notices.failed(phone_number_id, address, exc)
        if delay is None:
            log.warning("maintenance notice to %s given up: %s", address, exc)
        else:
            log.warning("maintenance notice to %s not sent (%s); trying again in %.1f s", address, exc, delay)
        raise
    rt.notices.sent(phone_number_id, address)
    log.info("maintenance notice sent to %s", address)
    return "sent"
