"""Side effects written as rows inside a state change's transaction, and
dispatched (lanes scheduled) only after it commits.

Writing the intent (an outbound message, an n8n delivery) in the same
transaction as the state change means a crash can delay an effect but never
lose it or perform it for a change that rolled back; the cron sweep finds
rows whose dispatch was lost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from models import Conversation, Delivery, Message, new_id, utcnow
from models.base import isoformat


@dataclass
class Effects:
    """The lanes a committed transaction asks to be scheduled."""
    schedules: list[tuple[str, str]] = field(default_factory=list)

    def schedule(self, lane: str, key: str) -> None:
        if (lane, key) not in self.schedules:
            self.schedules.append((lane, key))


def queue_outbound(conv: Conversation, effects: Effects, *, sender: str, text: str | None = None,
                   template: dict | None = None, media: dict | None = None, turn_id: str | None = None,
                   control_epoch: int | None = None, agent_id: str | None = None) -> Message:
    """Record an outbound message as `queued`; the outbound lane sends it in order."""
    now = utcnow()
    message = Message.create(
        id=new_id("m"), conversation=conv.id, channel=conv.channel_id, direction="out", sender=sender,
        agent_id=agent_id, type="template" if template else (media or {}).get("type", "text"),
        text=text, template=template, media=media, sent_at=now, received_at=now, routed_to="none",
        status="queued", turn_id=turn_id, control_epoch=control_epoch)
    effects.schedule("outbound", conv.id)
    return message


def queue_event(url: str, fields: dict, event_type: str, effects: Effects,
                conversation_id: str | None) -> Delivery | None:
    """Record an n8n delivery of `event_type`; nothing when the branch's URL is unset."""
    if not url:
        return None
    delivery_id = new_id("dl")
    body = {"event": event_type, "delivery_id": delivery_id, "occurred_at": isoformat(utcnow()), **fields}
    delivery = Delivery.create(id=delivery_id, event_type=event_type, url=url,
                               body=orjson.dumps(body).decode(), conversation_id=conversation_id)
    effects.schedule("events", delivery_id)
    return delivery
