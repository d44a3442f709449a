"""After a transaction commits: free reservations, schedule lanes, count
outcomes, publish live events, and offer newly waiting conversations to agents.

`routing.change.Changes` calls this once for each change it commits; a
second call with the same effects does nothing. The change has committed by
then, so nothing here may turn it into an error: each step is best effort,
and what a step could not do (Redis away, a worker killed) the cron picks up
from the database. The sweep (jobs/timers.py) re-dispatches unrouted
messages, unsent outbound messages and pending deliveries, and repairs
capacity reservations; the handoff timers offer waiting conversations nobody
was offered. So a write call whose change committed answers as committed, and
a client never retries (and duplicates) a change that happened."""
from __future__ import annotations

import logging

from . import counters
from .effects import TYPING_SECONDS, Effects
from .errors import ContendedConversation
from .live import publish

log = logging.getLogger(__name__)


def typing_key(prefix: str, conversation_id: str) -> str:
    """The customer message a typing indicator is waiting to be shown for (jobs/send.py takes it)."""
    return f"{prefix}:typing:{conversation_id}"


def dispatch(rt, effects: Effects) -> None:
    if effects.dispatched:
        return
    effects.dispatched = True
    for step in (_free_reservations, _show_typing, _schedule_lanes, _count, _publish_live, _offer):
        try:
            step(rt, effects)
        except Exception:
            log.warning("after a commit, %s failed; the cron sweep and timers take it over",
                        step.__doc__, exc_info=True)


def _free_reservations(rt, effects: Effects) -> None:
    """freeing capacity reservations"""
    for agent_id, conversation_id in effects.releases:
        rt.reservations.release(agent_id, conversation_id)


def _show_typing(rt, effects: Effects) -> None:
    """noting a typing indicator"""
    if not effects.typing:
        return
    pipe = rt.redis.pipeline(transaction=False)
    for conversation_id, provider_message_id in effects.typing:     # before the lane is scheduled
        pipe.set(typing_key(rt.settings.REDIS_PREFIX, conversation_id), provider_message_id, ex=TYPING_SECONDS)
    pipe.execute()


def _schedule_lanes(rt, effects: Effects) -> None:
    """scheduling work lanes"""
    by_lane: dict[str, list[str]] = {}
    for lane, key in effects.schedules:
        by_lane.setdefault(lane, []).append(key)
    for lane, keys in by_lane.items():
        for claim in rt.lanes.schedule_many(lane, keys):
            rt.start_pump(claim)
    if effects.inbox:
        rt.start_pump(rt.lanes.schedule_inbound_many(effects.inbox))


def _count(rt, effects: Effects) -> None:
    """counting outcomes (the metrics' counters)"""
    counters.increment(rt.redis, rt.settings.REDIS_PREFIX, effects.counts)


def _publish_live(rt, effects: Effects) -> None:
    """publishing live events (consoles re-read over REST)"""
    publish(rt.redis, rt.settings.REDIS_PREFIX, effects.live)


def _offer(rt, effects: Effects) -> None:
    """offering waiting conversations (the handoff timers offer them on their next tick)"""
    for conversation_id in effects.offers:
        from .assignment import offer_next

        try:
            offer_next(rt.changes, rt.reservations, conversation_id)   # dispatches its own change
        except ContendedConversation:
            log.info("offering %s waits for the next tick: it kept changing", conversation_id)
