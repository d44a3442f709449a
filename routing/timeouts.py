"""Durable timers' outcomes: every deadline lives in a conversation row, the
cron tick finds the due ones, and each outcome commits under the
conversation's compare-and-set through `routing.change` (so two ticks, or a
tick racing an agent, apply it at most once). Each outcome re-checks that its
timer is still due against a fresh read, and answers whether it applied.
Every outcome is an audit event and a notification.

  offer expiry          the offered agent did not accept in OFFER_TIMEOUT → next agent
  pending timeout       nobody took it in PENDING_TIMEOUT → PENDING_TIMEOUT_POLICY
                        (collect_callback also sends `callback.requested`)
  agent unresponsive    the assigned agent left the customer waiting AGENT_RESPONSE_TIMEOUT → re-offer
  typing hold expiry    the typing agent never answered → held messages go to the bot, in order
  idle close            no activity for IDLE_CLOSE_AFTER → CLOSED
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta


from config import Settings
from models import (AGENT_CONTROLLED, BOT_CONTROLLED, CLOSED, PENDING_AGENT, Agent, CallbackRequest,
                    Conversation, isoformat, new_id, utcnow)

from .change import Change, Changes
from .decide import cleared_handoff
from .handoff import plan_close
from .notices import say_notice

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


def _agent(agent_id: str | None) -> Agent | None:
    return Agent.get_or_none(Agent.id == agent_id) if agent_id else None


def expire_offer(changes: Changes, conversation_id: str, *, withdrawn_from: str | None = None) -> bool:
    """The offer lapsed (or, with `withdrawn_from`, that agent went away):
    the next agent gets it."""
    def plan(change: Change) -> bool:
        conv = change.conv
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
        change.set({"offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": lapsed})
        change.audit("system", PENDING_AGENT, PENDING_AGENT, reason, {"agent_id": lapsed_agent})
        change.notify("handoff.timeout", reason=reason, agent=_agent(lapsed_agent))
        change.free_seat(lapsed_agent)
        change.offer()
        return True
    return changes.run(conversation_id, plan)


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


def agent_unresponsive(changes: Changes, conversation_id: str) -> bool:
    def plan(change: Change) -> bool:
        conv, settings = change.conv, change.settings
        now = utcnow()
        limit = now - timedelta(seconds=settings.AGENT_RESPONSE_TIMEOUT)
        if (conv.state != AGENT_CONTROLLED or conv.assigned_agent_id is None
                or conv.awaiting_agent_since is None or conv.awaiting_agent_since >= limit):
            return False
        silent = conv.assigned_agent_id
        change.set({"state": PENDING_AGENT, "control_epoch": conv.control_epoch + 1, "assigned_agent_id": None,
                    "offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": [silent],
                    "pending_since": now, "awaiting_agent_since": None})
        change.audit("system", AGENT_CONTROLLED, PENDING_AGENT, "agent_unresponsive", {"agent_id": silent})
        change.notify("handoff.timeout", reason="agent_unresponsive", agent=_agent(silent))
        change.free_seat(silent)
        change.offer()
        return True
    return changes.run(conversation_id, plan)


def pending_timeout(changes: Changes, conversation_id: str) -> bool:
    def plan(change: Change) -> bool:
        conv, settings = change.conv, change.settings
        now = utcnow()
        if (conv.state != PENDING_AGENT or conv.pending_since is None
                or conv.pending_since >= now - timedelta(seconds=settings.PENDING_TIMEOUT)):
            return False
        policy = settings.PENDING_TIMEOUT_POLICY
        target = settings.PENDING_TIMEOUT_GROUP
        if policy == "reroute" and (not target or target == conv.group):
            # Nowhere left to reroute to (or already rerouted): collect a callback instead.
            policy = "collect_callback"
        change.free_seat(conv.offered_agent_id)
        waited_from = conv.pending_since
        details = {"policy": policy, "waited_seconds": int((now - conv.pending_since).total_seconds()),
                   "from_group": conv.group}
        if policy == "reroute":
            change.set({"group": target, "escalation_reason": "timeout_reroute", "pending_since": now,
                        "offered_agent_id": None, "offer_expires_at": None, "offers_lapsed": []})
            change.audit("system", PENDING_AGENT, PENDING_AGENT, "pending_timeout", {**details, "to_group": target})
            change.notify("handoff.timeout", reason="pending_timeout")
            change.offer()
        elif policy == "collect_callback":
            request = CallbackRequest(id=new_id("cb"), conversation=conv.id, group=conv.group,
                                      reason=conv.escalation_reason or "pending_timeout", status="open",
                                      created_at=now)
            change.effects.insert(request)
            metadata = {**(conv.metadata or {}), "mode": "collect_callback", "callback_request_id": request.id}
            columns = {**cleared_handoff(), "state": BOT_CONTROLLED, "control_epoch": conv.control_epoch + 1,
                       "cooldown_remaining": settings.COOLDOWN_INTERACTIONS, "metadata": metadata,
                       "group": conv.group}
            change.settle_held(None, columns)
            change.set(columns)
            change.audit("system", PENDING_AGENT, BOT_CONTROLLED, "pending_timeout",
                         {**details, "callback_request_id": request.id})
            say_notice(change, "CALLBACK_NOTICE")
            change.notify("handoff.timeout", reason="pending_timeout")
            change.notify("callback.requested", reason=request.reason, callback=request,
                          waiting_since=isoformat(waited_from))
        else:
            change.audit("system", PENDING_AGENT, PENDING_AGENT, "pending_timeout", details)
            change.notify("handoff.timeout", reason="pending_timeout")
            say_notice(change, "TIMEOUT_CLOSE_NOTICE")
            plan_close(change, actor="system", reason="pending_timeout", by={"type": "system"})
        return True
    return changes.run(conversation_id, plan)


def end_hold(changes: Changes, conversation_id: str) -> bool:
    def plan(change: Change) -> bool:
        conv = change.conv
        if conv.held_since is None or (conv.typing_until is not None and conv.typing_until >= utcnow()):
            return False
        typist = conv.typing_agent_id
        routed_again = change.route_held_again()
        change.audit("system", conv.state, conv.state, "typing_expired",
                     {"messages": routed_again, "agent_id": typist})
        change.notify("handoff.timeout", reason="typing_expired", agent=_agent(typist))
        return True
    return changes.run(conversation_id, plan)


def idle_close(changes: Changes, conversation_id: str) -> bool:
    def plan(change: Change) -> bool:
        conv, settings = change.conv, change.settings
        limit = utcnow() - timedelta(seconds=settings.IDLE_CLOSE_AFTER)
        if conv.state == CLOSED or conv.last_activity_at is None or conv.last_activity_at >= limit:
            return False
        plan_close(change, actor="system", reason="idle", by={"type": "system"})
        return True
    return changes.run(conversation_id, plan)
