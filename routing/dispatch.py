"""After a transaction commits: free reservations, schedule lanes, count
outcomes, publish live events, and offer newly waiting conversations to agents.

`routing.change.Changes` calls this once for each change it commits; a
second call with the same effects does nothing. The change has committed by
then, so an offer that cannot be made now (its conversation keeps changing)
is left to the timers' next tick rather than failing what already happened."""
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
    for agent_id, conversation_id in effects.releases:
        rt.reservations.release(agent_id, conversation_id)
    for conversation_id, provider_message_id in effects.typing:     # before the lane is scheduled
        rt.redis.set(typing_key(rt.settings.REDIS_PREFIX, conversation_id), provider_message_id,
                     ex=TYPING_SECONDS)
    for lane, key in effects.schedules:
        rt.schedule(lane, key)
    if effects.inbox:
        rt.start_pump(rt.lanes.schedule_inbound_many(effects.inbox))
    counters.increment(rt.redis, rt.settings.REDIS_PREFIX, effects.counts)
    try:
        publish(rt.redis, rt.settings.REDIS_PREFIX, effects.live)
    except Exception:           # live events are best effort: consoles re-read over REST
        log.warning("could not publish %d live event(s)", len(effects.live), exc_info=True)
    for conversation_id in effects.offers:
        from .assignment import offer_next

        try:
            offer_next(rt.changes, rt.reservations, conversation_id)   # dispatches its own change
        except ContendedConversation:
            log.info("offering %s waits for the next tick: it kept changing", conversation_id)
