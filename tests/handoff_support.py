"""The people in a story and what they leave behind: customers writing in, the bot
answering its turns, a team of agents, and the outcome read back from the database."""
from __future__ import annotations

from datetime import timedelta

from models import Contact, Conversation, Event, OutboxEntry, utcnow
from routing.agents import create_agent, set_status
from tests.support import bearer, settle, text_webhook

ASK_FOR_A_HUMAN = "I want to talk to a human"
CUSTOMER = "15550001111"


# -- customers and the bot ------------------------------------------------------------------------

def customer_says(app, text: str, wa_id: str = CUSTOMER, **webhook) -> dict:
    """The customer `wa_id` writes `text` (a Cloud API webhook signed like Meta's;
    `webhook` takes text_webhook's options); returns Baton's 200 answer."""
    raw, headers = text_webhook(wa_id, text, **webhook)
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200, response.json
    return response.json


def waiting_customer(app, text: str = ASK_FOR_A_HUMAN, wa_id: str = CUSTOMER, **webhook) -> Conversation:
    """A customer asks for a human and routing runs: their conversation."""
    customer_says(app, text, wa_id, **webhook)
    settle(app)
    return conversation_of(wa_id)


def bot_replies(app, token: str, turn: dict, **body):
    """The bot (n8n's AI branch) answers `turn`, a bot.turn event body, through
    POST /api/v1/bot/replies."""
    return app.test_client().post("/api/v1/bot/replies", headers=bearer(token), json={
        "conversation_id": turn["conversation"]["id"], "turn_id": turn["turn_id"], **body})


# -- agents ------------------------------------------------------------------------------------

class Team:
    """Agents of one test app, by name: `team.add("ana")`, `team.token["ana"]`."""

    def __init__(self, app):
        self.app = app
        self.rt = app.extensions["baton"]
        self.client = app.test_client()
        self.agents: dict = {}
        self.token: dict = {}

    def add(self, name: str, *, groups=("support",), max_concurrent: int = 5, role: str = "agent",
            online: bool = True):
        agent, token = create_agent(name, role, list(groups), max_concurrent)
        self.agents[name], self.token[name] = agent, token
        if online:
            self.online(name)
        return agent

    def online(self, name: str) -> None:
        set_status(self.rt.presence, self.agents[name], "online")

    def offline(self, name: str) -> None:
        set_status(self.rt.presence, self.agents[name], "offline")

    def heartbeat_lapses(self, name: str) -> None:
        """The laptop closed AGENT_HEARTBEAT_TTL ago: the heartbeat key has expired
        (Redis drops it; nobody edits a row)."""
        self.rt.redis.delete(self.rt.presence.heartbeat_key(self.id(name)))

    def id(self, name: str) -> str:
        return self.agents[name].id

    def call(self, name: str, method: str, path: str, json=None):
        return self.client.open(path, method=method, json=json, headers=bearer(self.token[name]))

    def act(self, name: str, action: str, conversation_id: str, json=None):
        return self.call(name, "POST", f"/api/v1/conversations/{conversation_id}/{action}", json)


# -- the clock ------------------------------------------------------------------------------------

def backdate(conversation_id: str, **seconds_ago) -> None:
    """Move the clock for one conversation's timers: set each named time column
    (a deadline or a 'since') to that many seconds before now."""
    now = utcnow()
    Conversation.update(**{field: now - timedelta(seconds=s) for field, s in seconds_ago.items()}) \
        .where(Conversation.id == conversation_id).execute()


# -- the outcome ------------------------------------------------------------------------------------

def conversation_of(wa_id: str = CUSTOMER) -> Conversation:
    return Conversation.select().join(Contact).where(Contact.wa_id == wa_id).get()


def outbox_texts(wa_id: str | None = None) -> list[str | None]:
    """The text of every message the sandbox provider sent (to `wa_id`), oldest first."""
    rows = OutboxEntry.select().order_by(OutboxEntry.created_at, OutboxEntry.id)
    if wa_id is not None:
        rows = rows.where(OutboxEntry.to == wa_id)
    return [((row.payload or {}).get("text") or {}).get("body") for row in rows]


def audit_events(conversation_id: str) -> list[Event]:
    """The conversation's audit trail, oldest first."""
    return list(Event.select().where(Event.conversation == conversation_id).order_by(Event.created_at, Event.id))


def trail(conversation_id: str) -> list[tuple]:
    """The audit trail as (from, to, reason) tuples, oldest first."""
    return [(e.from_state, e.to_state, e.reason) for e in audit_events(conversation_id)]


def state_and_trail(conversation_id: str) -> tuple:
    conv = Conversation.get_by_id(conversation_id)
    return (conv.state, conv.version, conv.assigned_agent_id, conv.offered_agent_id, conv.control_epoch,
            tuple(trail(conversation_id)))
