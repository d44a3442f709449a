"""Factories for the human side: agents, presence, and a customer waiting for one."""
from __future__ import annotations

from models import Conversation, Event
from routing.agents import create_agent, set_status
from tests.support import text_webhook


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


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

    def id(self, name: str) -> str:
        return self.agents[name].id

    def call(self, name: str, method: str, path: str, json=None):
        return self.client.open(path, method=method, json=json, headers=bearer(self.token[name]))

    def act(self, name: str, action: str, conversation_id: str, json=None):
        return self.call(name, "POST", f"/api/v1/conversations/{conversation_id}/{action}", json)


def customer_says(app, text: str, wa_id: str = "15550001111", **kwargs) -> None:
    raw, headers = text_webhook(wa_id, text, **kwargs)
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200, response.json


def conversation_of(wa_id: str = "15550001111") -> Conversation:
    from models import Contact

    return Conversation.select().join(Contact).where(Contact.wa_id == wa_id).get()


def trail(conversation_id: str) -> list[tuple]:
    """The audit trail as (from, to, reason) tuples, oldest first."""
    rows = Event.select().where(Event.conversation == conversation_id).order_by(Event.created_at, Event.id)
    return [(e.from_state, e.to_state, e.reason) for e in rows]


def state_and_trail(conversation_id: str) -> tuple:
    conv = Conversation.get_by_id(conversation_id)
    return (conv.state, conv.version, conv.assigned_agent_id, conv.offered_agent_id, conv.control_epoch,
            tuple(trail(conversation_id)))
