"""Durable timers' outcomes: every deadline lives in a conversation row, the
cron tick finds the due ones, and each outcome commits under the
conversation's compare-and-set (so two ticks, or a tick racing an agent,
apply it at most once). Every outcome is an audit event and a notification.

  offer expiry          the offered agent did not accept in OFFER_TIMEOUT → next agent
  pending timeout       nobody took it in PENDING_TIMEOUT → PENDING_TIMEOUT_POLICY
  agent unresponsive    the assigned agent left the customer waiting AGENT_RESPONSE_TIMEOUT → re-offer
  typing hold expiry    the typing agent never answered → held messages go to the bot, in order
  idle close            no activity for IDLE_CLOSE_AFTER → CLOSED
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from peewee import fn

from config import Settings
from models import (AGENT_CONTROLLED, BOT_CONTROLLED, CLOSED, PENDING_AGENT, Agent, CallbackRequest,
                    Conversation, new_id, utcnow)

from .apply import _audit, _cas, _cleared_handoff, _notify, load_conversation
from .effects import Effects, VersionConflict, queue_outbound
from .handoff import plan_close, plan_end_of_hold

log = logging.getLogger(__name__)
BATCH = 200


def _due(*conditions) -> list[str]:
    rows = Conversation.select(Conversation.id).where(*conditions).order_by(Conversation.id).limit(BATCH)
    return [row.id for row in rows]


def due_offers(now: datetime) -> list[str]:
    return _due(Conversation.state == PENDING_AGENT, Conversation.offer_expires_at < now)


def due_pending_timeouts(settings: Settings, now: datetime) -> list[str]:
    return _due(Conversation.state == PENDING_AGENT,
                Conversation.pending_since < now - timedelta(seconds=settings.PENDING_TIMEOUT))


def due_unresponsive(settings: Settings, now: datetime) -> list[str]:
    return _due(Conversation.state == AGENT_CONTROLLED, Conversation.assigned_agent_id.is_null(False),
                Conversation.awaiting_agent_since < now - timedelta(seconds=settings.AGENT_RESPONSE_TIMEOUT))


def due_holds(now: datetime) -> list[str]:
    return _due(Conversation.held_since.is_null(False), Conversation.typing_until < now)


def due_idle(settings: Settings, now: datetime) -> list[str]:
    return _due(Conversation.state != CLOSED,
                Conversation.last_activity_at < now - timedelta(seconds=settings.IDLE_CLOSE_AFTER))


def waiting_for_offer() -> list[str]:
    rows = (Conversation.select(Conversation.id)
            .where((Conversation.state == PENDING_AGENT) & Conversation.offered_agent_id.is_null())
            .order_by(fn.COALESCE(Conversation.escalation_urgency, 0).desc(), Conversation.pending_since,
                      Conversation.id)
            .limit(BATCH))
    return [row.id for row in rows]


def _apply(conversation_id: str, plan) -> Effects:
    """Re-read, re-check and plan (`plan(conv, effects)` returns False when
    the timer is no longer due), then commit; again on a conflict."""
    for _ in range(8):
        conv = load_conversation(conversation_id)
        effects = Effects()
        if conv is None or not plan(conv, effects):
            return Effects()
        try:
            effects.commit()
            return effects
        except VersionConflict:
            continue
    return Effects()


def _agent(agent_id: str | None) -> Agent | None:
    return Agent.get_or_none(Agent.id == agent_id) if agent_id else None


def expire_offer(settings: Settings, conversation_id: str, *, withdrawn_from: str | None = None) -> Effects:
    """The offer lapsed (or, with `withdrawn_from`, that agent went away):
    the next agent gets it."""
    def plan(conv, effects):
        now = utcnow()
        if conv.state != PENDING_AGENT or conv.offered_agent_id is None:
            return False
        if withdrawn_from is not None:
            if conv.offered_agent_id != withdrawn_from:
                return False
        elif conv.offer_expires_at is None or conv.offer_expires_at >= now:
            return False
        reason = "offer_expired" if withdrawn_from is None else "offer_withdrawn"
        lapsed_agent = conv.offered_agent_id
        lapsed = [*(conv.offers_lapsed or []), *([lapsed_agent] if lapsed_agent else [])]
        _cas(conv, {"offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": lapsed}, effects)
        _audit(conv, effects, "system", PENDING_AGENT, PENDING_AGENT, reason, {"agent_id": lapsed_agent})
        _notify(settings, conv, "handoff.timeout", effects, reason=reason, agent=_agent(lapsed_agent))
        effects.release_reservation(lapsed_agent, conv.id)
        effects.offer(conv.id)
        return True
    return _apply(conversation_id, plan)


def offers_to_absent_agents(presence) -> list[tuple[str, str]]:
    """(conversation, agent) for live offers whose agent is no longer online
    (heartbeat lapsed): they move on now rather than when the offer lapses."""
    rows = list(Conversation.select(Conversation.id, Conversation.offered_agent_id)
                .where((Conversation.state == PENDING_AGENT) & Conversation.offered_agent_id.is_null(False))
                .limit(BATCH))
    online = presence.online(sorted({row.offered_agent_id for row in rows}))
    return [(row.id, row.offered_agent_id) for row in rows if not online[row.offered_agent_id]]


def offers_to(agent_id: str) -> list[str]:
    return _due(Conversation.state == PENDING_AGENT, Conversation.offered_agent_id == agent_id)


def agent_unresponsive(settings: Settings, conversation_id: str) -> Effects:
    def plan(conv, effects):
        now = utcnow()
        limit = now - timedelta(seconds=settings.AGENT_RESPONSE_TIMEOUT)
        if (conv.state != AGENT_CONTROLLED or conv.assigned_agent_id is None
                or conv.awaiting_agent_since is None or conv.awaiting_agent_since >= limit):
            return False
        silent = conv.assigned_agent_id
        _cas(conv, {"state": PENDING_AGENT, "control_epoch": conv.control_epoch + 1, "assigned_agent_id": None,
                    "offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": [silent],
                    "pending_since": now, "awaiting_agent_since": None}, effects)
        _audit(conv, effects, "system", AGENT_CONTROLLED, PENDING_AGENT, "agent_unresponsive", {"agent_id": silent})
        _notify(settings, conv, "handoff.timeout", effects, reason="agent_unresponsive", agent=_agent(silent))
        effects.release_reservation(silent, conv.id)
        effects.offer(conv.id)
        return True
    return _apply(conversation_id, plan)


def pending_timeout(settings: Settings, conversation_id: str) -> Effects:
    def plan(conv, effects):
        now = utcnow()
        if (conv.state != PENDING_AGENT or conv.pending_since is None
                or conv.pending_since >= now - timedelta(seconds=settings.PENDING_TIMEOUT)):
            return False
        policy = settings.PENDING_TIMEOUT_POLICY
        target = settings.PENDING_TIMEOUT_GROUP
        if policy == "reroute" and (not target or target == conv.group):
            # Nowhere left to reroute to (or already rerouted): collect a callback instead.
            policy = "collect_callback"
        effects.release_reservation(conv.offered_agent_id, conv.id)
        details = {"policy": policy, "waited_seconds": int((now - conv.pending_since).total_seconds()),
                   "from_group": conv.group}
        if policy == "reroute":
            _cas(conv, {"group": target, "escalation_reason": "timeout_reroute", "pending_since": now,
                        "offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": []}, effects)
            _audit(conv, effects, "system", PENDING_AGENT, PENDING_AGENT, "pending_timeout",
                   {**details, "to_group": target})
            _notify(settings, conv, "handoff.timeout", effects, reason="pending_timeout")
            effects.offer(conv.id)
        elif policy == "collect_callback":
            request = CallbackRequest(id=new_id("cb"), conversation=conv.id, group=conv.group,
                                      reason=conv.escalation_reason or "pending_timeout", status="open",
                                      created_at=now)
            effects.insert(request)
            metadata = {**(conv.metadata or {}), "mode": "collect_callback", "callback_request_id": request.id}
            _cas(conv, {**_cleared_handoff(), "state": BOT_CONTROLLED, "control_epoch": conv.control_epoch + 1,
                        "cooldown_remaining": settings.COOLDOWN_INTERACTIONS, "metadata": metadata,
                        "group": conv.group}, effects)
            _audit(conv, effects, "system", PENDING_AGENT, BOT_CONTROLLED, "pending_timeout",
                   {**details, "callback_request_id": request.id})
            queue_outbound(conv, effects, sender="system", text=settings.CALLBACK_NOTICE)
            _notify(settings, conv, "handoff.timeout", effects, reason="pending_timeout")
        else:
            _audit(conv, effects, "system", PENDING_AGENT, PENDING_AGENT, "pending_timeout", details)
            _notify(settings, conv, "handoff.timeout", effects, reason="pending_timeout")
            queue_outbound(conv, effects, sender="system", text=settings.TIMEOUT_CLOSE_NOTICE)
            plan_close(settings, conv, effects, actor="system", reason="pending_timeout", by={"type": "system"})
        return True
    return _apply(conversation_id, plan)


def end_hold(settings: Settings, conversation_id: str) -> Effects:
    def plan(conv, effects):
        if conv.held_since is None or (conv.typing_until is not None and conv.typing_until >= utcnow()):
            return False
        typist = conv.typing_agent_id
        plan_end_of_hold(conv, effects)
        _audit(conv, effects, "system", conv.state, conv.state, "typing_expired",
               {"messages": len(effects.inbox), "agent_id": typist})
        _notify(settings, conv, "handoff.timeout", effects, reason="typing_expired", agent=_agent(typist))
        return True
    return _apply(conversation_id, plan)


def idle_close(settings: Settings, conversation_id: str) -> Effects:
    def plan(conv, effects):
        limit = utcnow() - timedelta(seconds=settings.IDLE_CLOSE_AFTER)
        if conv.state == CLOSED or conv.last_activity_at is None or conv.last_activity_at >= limit:
            return False
        effects.release_reservation(conv.offered_agent_id if conv.state == PENDING_AGENT
                                    else conv.assigned_agent_id, conv.id)
        plan_close(settings, conv, effects, actor="system", reason="idle", by={"type": "system"})
        return True
    return _apply(conversation_id, plan)
