"""Offer-based round robin: who gets a waiting conversation next.

The pick and the capacity reservation are one Lua call, so two processes
escalating at once can never push an agent past `max_concurrent` (Redis runs
scripts one at a time). The database stays the truth about who holds what:
a reservation is made before the conversation's compare-and-set and given
back after a change that frees it commits, so the database never holds more
than Redis reserved. `reconcile()` (the cron sweep) repairs Redis from the
database after a crash or a flush.

Order: online agents of the group with free capacity, least recently offered
first (never offered first), ties by agent id; the customer's previous agent
first when sticky assignment is on and that agent qualifies.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from peewee import fn

from models import AGENT_CONTROLLED, PENDING_AGENT, Agent, Conversation, utcnow
from models.conversation import holder_of

from .change import Change, Changes
from .presence import Presence

log = logging.getLogger(__name__)

WAITING_BATCH = 200         # waiting conversations considered per pass
# A reservation the database does not confirm after this long was left by a
# process that died between reserving and committing.
STALE_RESERVATION_SECONDS = 60

# KEYS: seq, last, then (status, heartbeat, load) per candidate
# ARGV: conversation, now, sticky agent id or "", then (agent id, max) per candidate
_RESERVE_NEXT = """
local best, best_seq = nil, nil
local n = (#KEYS - 2) / 3
for i = 0, n - 1 do
  local agent, max = ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i])
  if redis.call('GET', KEYS[3 + 3 * i]) == 'online' and redis.call('EXISTS', KEYS[4 + 3 * i]) == 1
     and redis.call('ZCARD', KEYS[5 + 3 * i]) < max then
    if agent == ARGV[3] then best = i break end
    local seq = tonumber(redis.call('HGET', KEYS[2], agent) or '0')
    if best == nil or seq < best_seq then best, best_seq = i, seq end
  end
end
if best == nil then return false end
local agent = ARGV[4 + 2 * best]
local previous = redis.call('HGET', KEYS[2], agent) or '0'
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[5 + 3 * best], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], agent, seq)
return {agent, tostring(seq), previous}
"""

# Undo a reserve_next whose change did not commit: free the seat and give the
# agent back its place in the rotation, unless another pick moved it since.
# KEYS: load, last; ARGV: conversation, agent, seq, previous
_UNRESERVE_NEXT = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[3] then
  if ARGV[4] == '0' then redis.call('HDEL', KEYS[2], ARGV[2]) else redis.call('HSET', KEYS[2], ARGV[2], ARGV[4]) end
end
return 1
"""

# KEYS: load; ARGV: conversation, now, max, force -> 1 reserved (or already held), 0 full
_RESERVE_FOR = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if ARGV[4] == '1' or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Pick:
    """A seat reserve_next reserved, and what undoing it restores."""
    agent_id: str
    conversation_id: str
    seq: str
    previous: str


class Reservations:
    """Capacity reservations over `Presence`'s keys."""

    def __init__(self, presence: Presence):
        self.presence = presence
        redis = presence.redis
        self._next = redis.register_script(_RESERVE_NEXT)
        self._unreserve_next = redis.register_script(_UNRESERVE_NEXT)
        self._for = redis.register_script(_RESERVE_FOR)

    def reserve_next(self, conversation_id: str, candidates: list[Agent], sticky: str | None) -> Pick | None:
        """Reserve a seat for `conversation_id` with the candidate next in the
        rotation (moving them to its end); None when nobody has room."""
        if not candidates:
            return None
        p = self.presence
        keys = [p.sequence_key, p.last_assigned_key]
        args: list = [conversation_id, time.time(), sticky or ""]
        for agent in sorted(candidates, key=lambda a: a.id):
            keys += [p.status_key(agent.id), p.heartbeat_key(agent.id), p.load_key(agent.id)]
            args += [agent.id, agent.max_concurrent]
        chosen = self._next(keys=keys, args=args)
        if not chosen:
            return None
        agent_id, seq, previous = (part.decode() if isinstance(part, bytes) else str(part) for part in chosen)
        return Pick(agent_id, conversation_id, seq, previous)

    def undo(self, pick: Pick) -> None:
        """The offer `pick` was for did not commit: free the seat, and the agent
        keeps their place in the rotation (a lost race is not an offer)."""
        p = self.presence
        self._unreserve_next(keys=[p.load_key(pick.agent_id), p.last_assigned_key],
                             args=[pick.conversation_id, pick.agent_id, pick.seq, pick.previous])

    def reserve_for(self, agent: Agent, conversation_id: str, force: bool = False) -> bool:
        return bool(self._for(keys=[self.presence.load_key(agent.id)],
                              args=[conversation_id, time.time(), agent.max_concurrent, "1" if force else "0"]))

    def release(self, agent_id: str | None, conversation_id: str) -> None:
        if agent_id:
            self.presence.redis.zrem(self.presence.load_key(agent_id), conversation_id)

    def reconcile(self) -> dict:
        """Make Redis hold exactly what the database says each agent holds
        (plus reservations young enough to be in flight)."""
        held: dict[str, set[str]] = {agent.id: set() for agent in Agent.select(Agent.id)}
        rows = (Conversation.select(Conversation.id, Conversation.state, Conversation.assigned_agent_id,
                                    Conversation.offered_agent_id)
                .where(Conversation.state.in_((PENDING_AGENT, AGENT_CONTROLLED))))
        for row in rows:
            owner = holder_of(row.state, row.offered_agent_id, row.assigned_agent_id)
            if owner in held:
                held[owner].add(row.id)
        redis, p = self.presence.redis, self.presence
        added = removed = 0
        cutoff = time.time() - STALE_RESERVATION_SECONDS
        for agent_id, conversations in held.items():
            reserved = {member.decode(): score
                        for member, score in redis.zrange(p.load_key(agent_id), 0, -1, withscores=True)}
            missing = conversations - reserved.keys()
            stale = [c for c, at in reserved.items() if c not in conversations and at < cutoff]
            if missing:
                redis.zadd(p.load_key(agent_id), {c: time.time() for c in missing})
                added += len(missing)
            if stale:
                redis.zrem(p.load_key(agent_id), *stale)
                removed += len(stale)
        if added or removed:
            log.warning("capacity reservations repaired from the database: %d added, %d removed", added, removed)
        return {"added": added, "removed": removed}


def agents_of_group(group: str) -> list[Agent]:
    """The group's active agents (a deactivated agent is never offered anything)."""
    return [agent for agent in Agent.select().where(Agent.deactivated_at.is_null()).order_by(Agent.id)
            if agent.in_group(group)]


def offer_next(changes: Changes, reservations: Reservations, conversation_id: str) -> bool:
    """Offer a waiting conversation to the next agent in the rotation (or to
    nobody, when no one qualifies; the timers try again). True when offered."""
    def plan(change: Change) -> bool:
        conv, settings = change.conv, change.settings
        if conv.state != PENDING_AGENT or conv.offered_agent_id:
            return False
        agents = agents_of_group(conv.group or settings.DEFAULT_GROUP)
        lapsed = list(conv.offers_lapsed or [])
        sticky = conv.last_agent_id if settings.STICKY_ASSIGNMENT and conv.last_agent_id not in lapsed else None
        pick = reservations.reserve_next(conv.id, [a for a in agents if a.id not in lapsed], sticky)
        if pick is None and lapsed:
            # Everyone eligible has let this one lapse: go round again, least
            # recently offered first (so the last to lapse comes last).
            lapsed = []
            pick = reservations.reserve_next(conv.id, agents, None)
        if pick is None:
            return False
        change.on_rollback(lambda: reservations.undo(pick))
        plan_offer(change, next(a for a in agents if a.id == pick.agent_id), lapsed)
        return True
    return changes.run(conversation_id, plan)


def waiting_for_offer() -> list[tuple[str, str | None]]:
    """(conversation, group) of those waiting without an offer, in line order:
    most urgent first, then longest waiting."""
    rows = (Conversation.select(Conversation.id, Conversation.group)
            .where((Conversation.state == PENDING_AGENT) & Conversation.offered_agent_id.is_null())
            .order_by(fn.COALESCE(Conversation.escalation_urgency, 0).desc(), Conversation.pending_since,
                      Conversation.id)
            .limit(WAITING_BATCH))
    return [(row.id, row.group) for row in rows]


def offer_waiting(changes: Changes, reservations: Reservations) -> int:
    """Offer waiting conversations in line order; how many got an offer.

    Once nobody in a group has room, the rest of that group's line waits for
    the next pass: a seat freed while this pass runs must go to the customer
    waiting longest, not to whoever the loop happens to be at."""
    full: set[str] = set()
    offered = 0
    for conversation_id, group in waiting_for_offer():
        group = group or changes.settings.DEFAULT_GROUP
        if group in full:
            continue
        if offer_next(changes, reservations, conversation_id):
            offered += 1
        else:
            full.add(group)
    return offered


def plan_offer(change: Change, agent: Agent, lapsed: list[str], actor: str = "system") -> None:
    """Offer the (waiting) conversation to `agent`, whose seat is reserved already."""
    conv, now = change.conv, utcnow()
    change.set({"offered_agent_id": agent.id, "offers_lapsed": lapsed,
                "offer_expires_at": now + timedelta(seconds=change.settings.OFFER_TIMEOUT)})
    change.effects.update(Agent, {"last_assigned_at": now}, {"id": agent.id})
    change.audit(actor, PENDING_AGENT, PENDING_AGENT, "offered", {"agent_id": agent.id})
    change.notify("handoff.offered", reason=conv.escalation_reason, agent=agent)
