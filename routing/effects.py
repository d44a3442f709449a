"""A state change planned outside the database lock, committed in one short
transaction, and dispatched (lanes scheduled) only after it commits.

Routing reads, decides and renders (event bodies, history, the built-in bot's
answer) without holding any lock; only the prepared statements run inside the
write transaction, the compare-and-set first. On SQLite, where writers queue
one at a time, that keeps the queue moving.

Writing the intent (an outbound message, an n8n delivery) in the same
transaction as the state change means a crash can delay an effect but never
lose it or perform it for a change that rolled back; the cron sweep finds
rows whose dispatch was lost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import orjson

from models import Conversation, Delivery, Message, db, new_id, utcnow, write_transaction
from models.base import isoformat
from models.message import numbered_insert
from models.prepared import insert_statement, update_statement

from .errors import VersionConflict
from .live import live_event
from .visibility import snapshot


TYPING_SECONDS = 25          # WhatsApp drops a typing indicator after this long, or at the reply


@dataclass
class Effects:
    """Statements to run in one transaction, and lanes to schedule after it."""
    # (sql, params, must_change_one, then): `then(cursor)` reads what the statement returned
    writes: list[tuple[str, tuple, bool, Callable | None]] = field(default_factory=list)
    schedules: list[tuple[str, str]] = field(default_factory=list)
    live: list[dict] = field(default_factory=list)            # routing.live events to publish
    offers: list[str] = field(default_factory=list)           # conversations to offer to an agent
    releases: list[tuple[str, str]] = field(default_factory=list)  # (agent, conversation) reservations to free
    inbox: list[tuple[str, str, float]] = field(default_factory=list)  # messages to route (again)
    typing: list[tuple[str, str]] = field(default_factory=list)  # (conversation, provider message id) to show typing for
    counts: list[str] = field(default_factory=list)            # routing.counters fields to increment
    dispatched: bool = False                                  # set once routing.dispatch has run it

    @classmethod
    def together(cls, group: list["Effects"]) -> "Effects":
        """The after-commit work of several committed changes (of different
        conversations) as one, so that it goes to Redis in a few round trips,
        not a few per change. Each change's own work keeps its order."""
        merged = cls()
        for effects in group:
            for name in ("schedules", "offers", "releases"):        # each once, as its methods keep them
                mine = getattr(merged, name)
                mine.extend(item for item in getattr(effects, name) if item not in mine)
            for name in ("live", "inbox", "typing", "counts"):
                getattr(merged, name).extend(getattr(effects, name))
            effects.dispatched = True       # dispatched as part of `merged`
        return merged

    def insert(self, row) -> None:
        """Prepare the INSERT of an unsaved model instance."""
        sql, params = insert_statement(row)
        self.writes.append((sql, tuple(params), False, None))

    def insert_message(self, message: Message, numbered: Callable[[int], None]) -> None:
        """Prepare the INSERT of a new message with the next `seq` of its
        conversation; `numbered(seq)` learns the seq inside the transaction."""
        names = tuple(name for name in message.__data__ if name in Message._meta.fields and name != "seq")
        values = [Message._meta.fields[name].db_value(message.__data__[name]) for name in names]
        statements = numbered_insert(names, values, message.conversation_id, returning_seq=True)
        for sql, params in statements[:-1]:
            self.writes.append((sql, tuple(params), False, None))
        sql, params = statements[-1]
        self.writes.append((sql, tuple(params), False, lambda cursor: numbered(cursor.fetchone()[0])))

    def update(self, model, changes: dict, where: dict, *, increment: str | None = None,
               must_change_one: bool = False) -> None:
        """Prepare an UPDATE (see models.prepared.update_statement)."""
        sql, params = update_statement(model, changes, where, increment)
        self.writes.append((sql, tuple(params), must_change_one, None))

    def schedule(self, lane: str, key: str) -> None:
        if (lane, key) not in self.schedules:
            self.schedules.append((lane, key))

    def offer(self, conversation_id: str) -> None:
        if conversation_id not in self.offers:
            self.offers.append(conversation_id)

    def release_reservation(self, agent_id: str | None, conversation_id: str) -> None:
        if agent_id and (agent_id, conversation_id) not in self.releases:
            self.releases.append((agent_id, conversation_id))

    def commit(self) -> None:
        """Run the prepared statements in one write transaction; a
        compare-and-set that changes no row raises VersionConflict (and rolls
        everything back)."""
        if not self.writes:
            return
        with write_transaction():
            self.execute()

    def execute(self) -> None:
        """Run the prepared statements in the caller's transaction."""
        for sql, params, must_change_one, then in self.writes:
            cursor = db.execute_sql(sql, params)
            if then is not None:
                then(cursor)
            elif cursor.rowcount != 1 and must_change_one:
                raise VersionConflict(sql)


def queue_outbound(conv: Conversation, effects: Effects, *, sender: str, text: str | None = None,
                   template: dict | None = None, media: dict | None = None, turn_id: str | None = None,
                   control_epoch: int | None = None, agent_id: str | None = None) -> Message:
    """Record an outbound message as `queued`; the outbound lane sends it in order."""
    now = utcnow()
    message = Message(
        id=new_id("m"), conversation=conv.id, channel=conv.channel_id, direction="out", sender=sender,
        agent_id=agent_id, type="template" if template else (media or {}).get("type", "text"),
        text=text, template=template, media=media, sent_at=now, received_at=now, routed_to="none",
        status="queued", turn_id=turn_id, control_epoch=control_epoch, attempts=0)
    event = live_event("message.created", conv.id, message.to_dict(), snapshot(conv))

    def numbered(seq: int) -> None:
        message.seq = event["data"]["seq"] = seq
    effects.insert_message(message, numbered)
    effects.schedule("outbound", conv.id)
    effects.live.append(event)
    return message


def queue_event(url: str, fields: dict, event_type: str, effects: Effects,
                conversation_id: str | None) -> Delivery | None:
    """Record an n8n delivery of `event_type`; nothing when the branch's URL is unset."""
    if not url:
        return None
    delivery_id = new_id("dl")
    body = {"event": event_type, "delivery_id": delivery_id, "occurred_at": isoformat(utcnow()), **fields}
    delivery = Delivery(id=delivery_id, event_type=event_type, url=url, body=orjson.dumps(body).decode(),
                        conversation_id=conversation_id, status="pending", attempts=0, created_at=utcnow())
    effects.insert(delivery)
    effects.schedule("events", delivery_id)
    return delivery
