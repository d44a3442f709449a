"""Durable timers run by RQ cron: nothing here lives in process memory.

tick()  — every second: promote due retries and make sure each lane with
          work has a pump (a pump job lost with a crashed worker is replaced).
sweep() — every few seconds: re-dispatch rows whose dispatch was lost
          (Redis down or flushed, a worker killed between commit and schedule).
"""
from __future__ import annotations

from calendar import timegm
from datetime import timedelta

from models import Delivery, Message, utcnow
from models.delivery import PENDING
from routing.lanes import LANES

from .context import job_logger, runtime

log = job_logger(__name__)
SWEEP_LIMIT = 5000


def tick() -> int:
    rt = runtime()
    promoted = 0
    for lane in LANES:
        promoted += rt.lanes.promote_due(lane)
        rt.start_pump(rt.lanes.claim_pump(lane))
    return promoted


def sweep() -> dict:
    rt = runtime()
    cutoff = utcnow() - timedelta(seconds=rt.settings.REQUEUE_AFTER)
    unrouted = (Message.select(Message.id, Message.conversation, Message.sent_at)
                .where(Message.routed_to.is_null() & (Message.received_at < cutoff))
                .order_by(Message.received_at)
                .limit(SWEEP_LIMIT))
    counts = {"inbound": 0, "outbound": 0, "events": 0}
    items = [(m.conversation_id, m.id, timegm(m.sent_at.timetuple()) + m.sent_at.microsecond / 1e6)
             for m in unrouted]
    for start in range(0, len(items), 200):
        rt.start_pump(rt.lanes.schedule_inbound_many(items[start:start + 200]))
    counts["inbound"] = len(items)
    stuck_out = (Message.select(Message.conversation).distinct()
                 .where((Message.direction == "out") & (Message.status == "queued")
                        & (Message.received_at < cutoff)
                        & (Message.next_attempt_at.is_null() | (Message.next_attempt_at < cutoff)))
                 .limit(SWEEP_LIMIT))
    for row in stuck_out:
        rt.schedule("outbound", row.conversation_id)
        counts["outbound"] += 1
    stuck_events = (Delivery.select(Delivery.id)
                    .where((Delivery.status == PENDING) & (Delivery.created_at < cutoff)
                           & (Delivery.next_attempt_at.is_null() | (Delivery.next_attempt_at < cutoff)))
                    .limit(SWEEP_LIMIT))
    for delivery in stuck_events:
        rt.schedule("events", delivery.id)
        counts["events"] += 1
    if any(counts.values()):
        log.info("sweep re-dispatched %s", counts)
    return counts

