"""The bodies of the events Baton sends to n8n: what the notification branch
(N8N_NOTIFY_URL) and the AI branch (N8N_BOT_URL) receive. `routing.effects`
adds `event`, `delivery_id` and `occurred_at` when it records a delivery.

A media message's `media.url` is given here even while the file is still
being fetched (routing never waits for it): n8n GETs it with its bot token
and follows the 302 to the file; until the file is stored it answers 409
`media_not_ready` with Retry-After."""
from __future__ import annotations

from config import Settings
from models import Agent, BotTurn, CallbackRequest, Conversation, Message
from models.prepared import PreparedSelect

_HISTORY = PreparedSelect(lambda conversation_id, limit: (
    Message.select()
    .where(Message.conversation == conversation_id)
    .order_by(Message.seq.desc())
    .limit(limit)))


def console_url(settings: Settings, conversation_id: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}/console/conversations/{conversation_id}"


def notification_fields(settings: Settings, conv: Conversation, event_type: str, *,
                        message: Message | None = None, reason: str | None = None, by: dict | None = None,
                        agent: Agent | None = None, callback: CallbackRequest | None = None,
                        waiting_since: str | None = None) -> dict:
    """`handoff.*` events name the agent, the reason and the console page;
    `callback.requested` carries the callback request, the reason, since when
    the customer has waited and the console page; `message.for_agent` carries
    the message, the agent and the console page; the others say who acted (`by`)."""
    fields: dict = {"conversation": conv.to_dict()}
    agent_dict = agent.to_dict() if agent is not None else None
    if event_type == "message.for_agent":
        fields.update(message=message.to_dict(media_url_always=True), agent=agent_dict,
                      console_url=console_url(settings, conv.id))
    elif event_type.startswith("handoff."):
        fields.update(agent=agent_dict, reason=reason, console_url=console_url(settings, conv.id))
    elif event_type == "callback.requested":
        fields.update(callback=callback.to_dict(), reason=reason, waiting_since=waiting_since,
                      console_url=console_url(settings, conv.id))
    else:
        fields["by"] = by
    return fields


def dead_letter_fields(settings: Settings, conv: Conversation, message: Message, letter) -> dict:
    """`message.dead_lettered`: the message set aside, why, and where to retry it."""
    return {"conversation": conv.to_dict(), "message": message.to_dict(media_url_always=True),
            "dead_letter": {"id": letter.id, "attempts": letter.attempts, "error": letter.error.split("\n", 1)[0],
                            "retry_url": f"/api/v1/admin/dead-letters/{letter.id}/retry"},
            "console_url": console_url(settings, conv.id)}


def turn_fields(settings: Settings, conv: Conversation, message: Message, turn: BotTurn) -> dict:
    """The `bot.turn` body: the conversation, the message to answer, the recent history."""
    return {"conversation": conv.to_dict(), "message": message.to_dict(media_url_always=True), "turn_id": turn.id,
            "history": history(conv.id, settings.BOT_HISTORY), "mode": turn.mode,
            "reply_url": f"{settings.PUBLIC_BASE_URL}/api/v1/bot/replies"}


def history(conversation_id: str, limit: int) -> list[dict]:
    """The conversation's last `limit` messages, oldest first."""
    return [m.to_dict(media_url_always=True) for m in reversed(_HISTORY.rows(conversation_id, limit))]
