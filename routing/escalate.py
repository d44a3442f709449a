"""A conversation asked to wait for a human: by the escalate API, by the bot
(`escalate: true`), or because the bot keeps failing."""
from __future__ import annotations

from dataclasses import dataclass

from models import BOT_CONTROLLED, PENDING_AGENT, Conversation, utcnow

from .change import Change, Changes, view_of
from .decide import decide_escalation, escalation_columns
from .notices import say_notice


@dataclass
class EscalationResult:
    conversation: Conversation
    changed: bool


def escalate(changes: Changes, conversation_id: str, *, reason: str, actor: str,
             urgency: float | None = None, group: str | None = None, note: str | None = None,
             automatic: bool = False, notice_text: str | None = None) -> EscalationResult:
    """Move a conversation to PENDING_AGENT unless it already is (or has) a human."""
    def plan(change: Change) -> EscalationResult:
        changed = plan_escalation(change, reason=reason, actor=actor, urgency=urgency, group=group, note=note,
                                  automatic=automatic, notice_text=notice_text)
        return EscalationResult(change.conv, changed)
    return changes.run(conversation_id, plan)


def plan_escalation(change: Change, *, reason: str, actor: str, urgency: float | None = None,
                    group: str | None = None, note: str | None = None, automatic: bool = False,
                    notice_text: str | None = None) -> bool:
    """Add an escalation to `change`; False when it does not apply (a human
    already has it, or the release cooldown suppresses an automatic trigger)."""
    conv, settings = change.conv, change.settings
    if not decide_escalation(view_of(conv), automatic=automatic).changed:
        return False
    before = conv.state
    columns = {"state": PENDING_AGENT, "control_epoch": conv.control_epoch + 1,
               **escalation_columns(reason, urgency, group or settings.DEFAULT_GROUP, utcnow())}
    if before != BOT_CONTROLLED:      # escalating a CLOSED conversation reopens its handoff fields
        columns["cooldown_remaining"] = 0
    change.settle_held("queued_for_agent", columns)
    change.set(columns)
    change.audit(actor, before, PENDING_AGENT, reason, {"urgency": urgency, "group": conv.group, "note": note})
    say_notice(change, "HANDOFF_NOTICE", text=notice_text, sender="bot" if notice_text else "system")
    change.notify("handoff.requested", reason=reason)
    change.offer()
    return True
