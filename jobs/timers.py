"""Durable timers run by RQ cron: nothing here lives in process memory.

tick()  — every second: promote due retries and make sure each lane with
          work has a pump (a pump job lost with a crashed worker is replaced);
          enqueue media fetches that are due (retries, lost hand-offs).
sweep() — every few seconds: re-dispatch rows whose dispatch was lost
          (Redis down or flushed, a worker killed between commit and schedule),
          repair capacity reservations from the database, close idle conversations.
handoff_timers() — every second: offers, pending timeouts, unresponsive
          agents and typing holds that are due (see routing.timeouts), bot
          turns whose reply deadline passed (routing.bot_failures), and
          waiting conversations nobody has been offered yet.
"""
from __future__ import annotations

from datetime import timedelta

from models import Agent, Delivery, Message, utcnow
from models.base import epoch_seconds
from models.delivery import PENDING
from models.message import is_unsent
from routing import bot_failures, timeouts
from routing.assignment import offer_waiting
from routing.lanes import LANES

from .context import job_logger, runtime
from .media import due_fetches

log = job_logger(__name__)
SWEEP_LIMIT = 5000


def tick() -> int:
    rt = runtime()
    promoted = 0
    for lane in LANES:
        promoted += rt.lanes.promote_due(lane)
        rt.start_pump(rt.lanes.claim_pump(lane))
    due_fetches(rt)
    return promoted


def sweep() -> dict:
    rt = runtime()
    cutoff = utcnow() - timedelta(seconds=rt.settings.REQUEUE_AFTER)
    unrouted = (Message.select(Message.id, Message.conversation, Message.sent_at)
                .where(Message.routed_to.is_null() & (Message.received_at < cutoff))
                .order_by(Message.received_at)
                .limit(SWEEP_LIMIT))
    counts = {"inbound": 0, "outbound": 0, "events": 0}
    items = [(m.conversation_id, m.id, epoch_seconds(m.sent_at))
             for m in unrouted]
    for start in range(0, len(items), 200):
        rt.start_pump(rt.lanes.schedule_inbound_many(items[start:start + 200]))
    counts["inbound"] = len(items)
    stuck_out = (Message.select(Message.conversation).distinct()
                 .where((Message.direction == "out") & is_unsent()
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
    counts["reservations"] = rt.reservations.reconcile()
    idle = timeouts.due_idle(rt.settings, utcnow())
    for conversation_id in idle:
        timeouts.idle_close(rt.changes, conversation_id)
    counts["idle_closed"] = len(idle)
    return counts


def handoff_timers() -> dict:
    rt = runtime()
    settings, changes = rt.settings, rt.changes
    now = utcnow()
    outcomes = {"offers_expired": 0, "offers_withdrawn": 0, "pending_timeouts": 0, "unresponsive": 0,
                "holds_ended": 0, "bot_timeouts": 0, "offered": 0}
    for conversation_id, agent_id in timeouts.offers_to_absent_agents(rt.presence):
        outcomes["offers_withdrawn"] += timeouts.expire_offer(changes, conversation_id, withdrawn_from=agent_id)
    steps = (("offers_expired", timeouts.due_offers(now), timeouts.expire_offer),
             ("pending_timeouts", timeouts.due_pending_timeouts(settings, now), timeouts.pending_timeout),
             ("unresponsive", timeouts.due_unresponsive(settings, now), timeouts.agent_unresponsive),
             ("holds_ended", timeouts.due_holds(now), timeouts.end_hold))
    for name, due, outcome in steps:
        for conversation_id in due:
            outcomes[name] += outcome(changes, conversation_id)
    for turn_id in bot_failures.due_turns(now):
        outcomes["bot_timeouts"] += bot_failures.turn_timed_out(changes, turn_id)
    agent_ids = [agent.id for agent in Agent.select(Agent.id)]
    if not any(rt.presence.online(agent_ids).values()):
        return _logged(outcomes)           # nobody to offer waiting customers to
    outcomes["offered"] = offer_waiting(changes, rt.reservations)
    return _logged(outcomes)


def _logged(outcomes: dict) -> dict:
    if any(outcomes.values()):
        log.info("handoff timers: %s", outcomes)
    return outcomes

