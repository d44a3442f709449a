"""Deactivating an agent: they leave for good, and nobody is left waiting on them.

`deactivate_agent()` first marks the agent deactivated and revokes every token
of theirs in one transaction (their next call is a 401, in every process), and
takes them out of the rotation in Redis. Then, each through `routing.change`:

- an offer to them moves on to the next agent, as when an agent goes away;
- a conversation they hold goes back to its group's queue (PENDING_AGENT, a
  new control epoch) and is offered at once to the next online agent, never to
  them again. A support team expects a customer in mid-conversation to reach a
  person, not to stay with someone who can no longer answer;
- messages held while they typed go to routing again, in order.

Safe to repeat: a second call finds nothing left and changes nothing, so a
deactivation interrupted half-way is finished by calling it again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from models import AGENT_CONTROLLED, PENDING_AGENT, Agent, ApiToken, Conversation, utcnow, write_transaction

from .change import Change, Changes
from .errors import NotFound
from .live import end_streams_of
from .presence import Presence
from .timeouts import expire_offer

log = logging.getLogger(__name__)


@dataclass
class Deactivation:
    agent: Agent
    tokens_revoked: int
    offers_moved: int
    conversations_requeued: int


def deactivate_agent(changes: Changes, presence: Presence, agent_id: str) -> Deactivation:
    agent = Agent.get_or_none(Agent.id == agent_id)
    if agent is None:
        raise NotFound("agent")
    now = utcnow()
    token_ids = [t.id for t in ApiToken.select(ApiToken.id)
                 .where((ApiToken.agent_id == agent_id) & ApiToken.revoked_at.is_null())]
    with write_transaction():
        (Agent.update(deactivated_at=now, status="offline")
         .where((Agent.id == agent_id) & Agent.deactivated_at.is_null()).execute())
        revoked = (ApiToken.update(revoked_at=now)
                   .where((ApiToken.agent_id == agent_id) & ApiToken.revoked_at.is_null()).execute())
    agent = Agent.get_by_id(agent_id)
    end_streams_of(presence.redis, presence.prefix, token_ids)
    presence.set_status(agent_id, "offline")
    presence.redis.delete(presence.heartbeat_key(agent_id))
    offers = [row.id for row in Conversation.select(Conversation.id)
              .where((Conversation.state == PENDING_AGENT) & (Conversation.offered_agent_id == agent_id))]
    moved = sum(bool(expire_offer(changes, cid, withdrawn_from=agent_id)) for cid in offers)
    held = [row.id for row in Conversation.select(Conversation.id)
            .where(((Conversation.state == AGENT_CONTROLLED) & (Conversation.assigned_agent_id == agent_id))
                   | (Conversation.typing_agent_id == agent_id))]
    requeued = sum(bool(_requeue(changes, cid, agent_id)) for cid in held)
    log.info("agent %s deactivated: %d token(s) revoked, %d offer(s) moved on, %d conversation(s) requeued",
             agent_id, revoked, moved, requeued)
    return Deactivation(agent, revoked, moved, requeued)


def _requeue(changes: Changes, conversation_id: str, agent_id: str) -> bool:
    """The conversation `agent_id` held (or typed in) no longer waits on them. True when it was requeued."""
    def plan(change: Change) -> bool:
        conv = change.conv
        if conv.typing_agent_id == agent_id:
            if conv.held_since is not None:
                change.route_held_again()
            else:
                change.set({"typing_agent_id": None, "typing_until": None})
        if conv.state != AGENT_CONTROLLED or conv.assigned_agent_id != agent_id:
            return False
        now = utcnow()
        change.set({"state": PENDING_AGENT, "control_epoch": conv.control_epoch + 1, "assigned_agent_id": None,
                    "offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": [agent_id],
                    "pending_since": now, "awaiting_agent_since": None, "last_activity_at": now})
        change.audit("system", AGENT_CONTROLLED, PENDING_AGENT, "agent_deactivated", {"agent_id": agent_id})
        change.notify("handoff.requested", reason=conv.escalation_reason)
        change.free_seat(agent_id)
        change.offer()
        return True
    return changes.run(conversation_id, plan)
