"""The authorization matrix (issue 11, tests that must exist #3): every route of
the app (read from `app.url_map`, so a route added without an entry here fails
`test_every_route_has_a_row_in_the_matrix`) × every caller (admin,
supervisor, agent, bot, no token, a revoked admin token, the token of a
deactivated admin agent) × the agent's own and another agent's conversation
(or callback, or media) where the route takes one, answers the expected status.
Every refusal (4xx) leaves the database exactly as it was: conversations
(state, version, holders, epoch, typing), messages, audit events, deliveries,
tokens, agents, callbacks, media, outbox and bot turns.

In-process (the app and Flask's test client), so the whole matrix runs in
seconds; each cell that may change something gets fresh conversations."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import pytest

from models import (AGENT_CONTROLLED, Agent, ApiToken, BotTurn, CallbackRequest, Conversation, Delivery, Event,
                    Media, Message, OutboxEntry)
from models.dead_letter import DeadLetter
from routing.agents import create_agent, set_status
from routing.deactivation import deactivate_agent
from tests.support import ASK_FOR_A_HUMAN, bearer, conversation_of, customer_says, settle, text_webhook
from tests.upload_files import png

ROLES = ("admin", "supervisor", "agent", "bot", "none", "revoked", "deactivated")
REFUSED_CALLERS = {"none": 401, "revoked": 401, "deactivated": 401}
ALL_TOKEN_ROLES = ("admin", "supervisor", "agent", "bot")
DIGEST = "abcd" + "0" * 60
KEY = f"sha256/ab/cd/{DIGEST}"


@dataclass
class Row:
    """One route: how to call it for a target, and the status each caller gets.
    `expect[role]` is a status, or (own, other) for routes that take a target."""
    call: Callable                      # (world, target) -> (method, path, kwargs)
    expect: dict
    targets: tuple = (None,)
    make_target: Callable | None = None  # (world, "own"|"other") -> id

    def status(self, role: str, target: str | None) -> int:
        value = self.expect[role]
        if isinstance(value, tuple):
            return value[0] if target == "own" else value[1]
        return value


def roles(admin=403, supervisor=403, agent=403, bot=403) -> dict:
    return {"admin": admin, "supervisor": supervisor, "agent": agent, "bot": bot, **REFUSED_CALLERS}


def public(status: int) -> dict:
    return {role: status for role in ROLES}


# -- the world: one desk, its callers and their conversations ------------------------------------------

@dataclass
class World:
    app: object
    n8n: object
    tokens: dict = field(default_factory=dict)
    agents: dict = field(default_factory=dict)
    counter: int = 0

    @property
    def rt(self):
        return self.app.extensions["baton"]

    def wa_id(self) -> str:
        self.counter += 1
        return f"1555900{self.counter:04d}"

    def held_by(self, name: str) -> str:
        """A fresh conversation held by agent `name` (`ana`: the caller's own; `bo`: another agent's)."""
        wa_id = self.wa_id()
        customer_says(self.app, ASK_FOR_A_HUMAN, wa_id=wa_id)
        settle(self.app)
        conv = conversation_of(wa_id)
        answer = self.app.test_client().post(f"/api/v1/conversations/{conv.id}/claim",
                                             headers=bearer(self.tokens[name]))
        assert answer.status_code == 200, answer.json
        assert Conversation.get_by_id(conv.id).state == AGENT_CONTROLLED
        return conv.id

    def conversation(self, target: str) -> str:
        return self.held_by("ana" if target == "own" else "bo")

    def bot_turn(self) -> tuple[str, str]:
        """A conversation the bot holds, with its open turn."""
        wa_id = self.wa_id()
        customer_says(self.app, "hello there", wa_id=wa_id)
        settle(self.app)
        conv = conversation_of(wa_id)
        turn = BotTurn.select().where(BotTurn.conversation == conv.id).order_by(BotTurn.created_at.desc()).get()
        return conv.id, turn.id

    def callback(self, target: str) -> str:
        """An open callback request in Ana's group (own) or in a group she is not in (other)."""
        conv = Conversation.get_by_id(self.held_by("bo"))
        return CallbackRequest.create(conversation=conv.id, group="support" if target == "own" else "billing",
                                      reason="pending_timeout").id

    def media(self, target: str) -> str:
        """A stored file in a message of Ana's conversation (own) or Bo's (other)."""
        conv_id = self.conversation(target)
        message = Message.select().where(Message.conversation == conv_id).order_by(Message.seq).first()
        return Media.create(channel=message.channel_id, message=message.id, direction="in", kind="image",
                            mime_type="image/png", size=10, status="stored", storage_key=KEY, sha256=DIGEST).id

    def delivery(self) -> str:
        return Delivery.create(event_type="handoff.offered", url=self.n8n.url_for("notify"), body="{}",
                               status="failed", attempts=8, last_error="HTTP 500").id

    def dead_letter(self) -> str:
        """A customer's message set aside (its routing kept failing)."""
        wa_id = self.wa_id()
        customer_says(self.app, "hello there", wa_id=wa_id)
        settle(self.app)
        message = Message.get((Message.conversation == conversation_of(wa_id).id) & (Message.direction == "in"))
        Message.update(routed_to="dead_letter").where(Message.id == message.id).execute()
        return DeadLetter.create(message=message.id, conversation=message.conversation_id, attempts=5,
                                 error="RuntimeError: poison").id

    def agent(self) -> str:
        agent, _ = create_agent(f"tmp{self.wa_id()}", "agent", ["support"], 3)
        return agent.id

    def token(self) -> str:
        return ApiToken.issue(f"spare{self.wa_id()}", "bot")[0].id


@pytest.fixture
def world(make_desk, n8n) -> World:
    # Refused callers would soon be locked out of 127.0.0.1 (429): this matrix is about roles.
    app = make_desk(N8N_BOT_URL=n8n.url_for("bot"), AUTH_FAILURE_LIMIT=1_000_000)
    w = World(app, n8n)
    rt = w.rt
    for name, role in (("sue", "supervisor"), ("ana", "agent"), ("bo", "agent"), ("dee", "admin")):
        agent, secret = create_agent(name, role, ["support"], 1000)
        set_status(rt.presence, agent, "online")
        w.agents[name], w.tokens[name] = agent, secret
    w.tokens["admin"] = ApiToken.issue("root", "admin")[1]
    w.tokens["bot"] = ApiToken.issue("n8n", "bot")[1]
    revoked, w.tokens["revoked"] = ApiToken.issue("old-root", "admin")
    ApiToken.revoke(revoked.id)
    deactivate_agent(rt.changes, rt.presence, w.agents["dee"].id)
    w.tokens["supervisor"], w.tokens["agent"], w.tokens["deactivated"] = w.tokens["sue"], w.tokens["ana"], \
        w.tokens["dee"]
    return w


def db_state() -> dict:
    """Everything a refusal must leave as it was."""
    return {
        "conversations": sorted((c.id, c.state, c.version, c.assigned_agent_id, c.offered_agent_id,
                                 c.control_epoch, c.typing_agent_id, c.group) for c in Conversation.select()),
        "messages": sorted((m.id, m.routed_to, m.status) for m in Message.select()),
        "events": Event.select().count(),
        "deliveries": sorted((d.id, d.status, d.attempts) for d in Delivery.select()),
        "tokens": sorted((t.id, t.revoked_at is None) for t in ApiToken.select()),
        "agents": sorted((a.id, a.status, a.deactivated_at is None) for a in Agent.select()),
        "callbacks": sorted((c.id, c.status) for c in CallbackRequest.select()),
        "media": Media.select().count(),
        "outbox": OutboxEntry.select().count(),
        "bot_turns": sorted((t.id, t.answered_at is None) for t in BotTurn.select()),
        "dead_letters": sorted((d.id, d.retried_at is None) for d in DeadLetter.select()),
    }


# -- the matrix ------------------------------------------------------------------------------------------

def conv_route(method: str, action: str | None, json=None):
    suffix = f"/{action}" if action else ""
    return lambda w, cid: (method, f"/api/v1/conversations/{cid}{suffix}", {"json": json} if json else {})


CONV = ("own", "other")

MATRIX: dict[tuple[str, str], Row] = {
    # admin only
    ("GET", "/api/v1/admin/deliveries"): Row(lambda w, _: ("GET", "/api/v1/admin/deliveries", {}), roles(admin=200)),
    ("POST", "/api/v1/admin/deliveries/<delivery_id>/replay"): Row(
        lambda w, _: ("POST", f"/api/v1/admin/deliveries/{w.delivery()}/replay", {}), roles(admin=200)),
    ("GET", "/api/v1/admin/dead-letters"): Row(lambda w, _: ("GET", "/api/v1/admin/dead-letters", {}),
                                               roles(admin=200)),
    ("POST", "/api/v1/admin/dead-letters/<dead_letter_id>/retry"): Row(
        lambda w, _: ("POST", f"/api/v1/admin/dead-letters/{w.dead_letter()}/retry", {}), roles(admin=200)),
    ("GET", "/api/v1/admin/outbox"): Row(lambda w, _: ("GET", "/api/v1/admin/outbox", {}), roles(admin=200)),
    ("POST", "/api/v1/agents"): Row(lambda w, _: ("POST", "/api/v1/agents", {"json": {"name": "Neu"}}),
                                    roles(admin=201)),
    ("POST", "/api/v1/agents/<agent_id>/deactivate"): Row(
        lambda w, _: ("POST", f"/api/v1/agents/{w.agent()}/deactivate", {}), roles(admin=200)),
    ("GET", "/api/v1/tokens"): Row(lambda w, _: ("GET", "/api/v1/tokens", {}), roles(admin=200)),
    ("DELETE", "/api/v1/tokens/<token_id>"): Row(lambda w, _: ("DELETE", f"/api/v1/tokens/{w.token()}", {}),
                                                 roles(admin=200)),
    # supervisors and admins
    ("GET", "/api/v1/agents"): Row(lambda w, _: ("GET", "/api/v1/agents", {}), roles(admin=200, supervisor=200)),
    # people with an agent row (an admin's bare token is not an agent: 403 not_an_agent)
    ("GET", "/api/v1/agents/me"): Row(lambda w, _: ("GET", "/api/v1/agents/me", {}),
                                      roles(supervisor=200, agent=200)),
    ("PATCH", "/api/v1/agents/me"): Row(lambda w, _: ("PATCH", "/api/v1/agents/me", {"json": {"status": "online"}}),
                                        roles(supervisor=200, agent=200)),
    ("POST", "/api/v1/agents/me/heartbeat"): Row(lambda w, _: ("POST", "/api/v1/agents/me/heartbeat", {}),
                                                 roles(supervisor=200, agent=200)),
    # the human side
    ("GET", "/api/v1/agents/online"): Row(lambda w, _: ("GET", "/api/v1/agents/online", {}),
                                          roles(admin=200, supervisor=200, agent=200)),
    ("GET", "/api/v1/callbacks"): Row(lambda w, _: ("GET", "/api/v1/callbacks", {}),
                                      roles(admin=200, supervisor=200, agent=200)),
    ("POST", "/api/v1/callbacks/<callback_id>/done"): Row(
        lambda w, cb: ("POST", f"/api/v1/callbacks/{cb}/done", {}),
        roles(admin=200, supervisor=200, agent=(200, 403)), CONV, World.callback),
    ("GET", "/api/v1/events"): Row(lambda w, _: ("GET", "/api/v1/events", {"buffered": False}),
                                   roles(admin=200, supervisor=200, agent=200)),
    # the bot
    ("POST", "/api/v1/bot/replies"): Row(
        lambda w, turn: ("POST", "/api/v1/bot/replies",
                         {"json": {"conversation_id": turn[0], "turn_id": turn[1], "text": "Sure!"}}),
        roles(bot=202), ("turn",), lambda w, _: w.bot_turn()),
    # conversations: everyone with a token reads; an agent only their own
    ("GET", "/api/v1/conversations"): Row(lambda w, _: ("GET", "/api/v1/conversations", {}),
                                          roles(admin=200, supervisor=200, agent=200, bot=200)),
    ("GET", "/api/v1/conversations/<conversation_id>"): Row(
        conv_route("GET", None), roles(admin=200, supervisor=200, agent=(200, 403), bot=200), CONV,
        World.conversation),
    ("GET", "/api/v1/conversations/<conversation_id>/messages"): Row(
        conv_route("GET", "messages"), roles(admin=200, supervisor=200, agent=(200, 403), bot=200), CONV,
        World.conversation),
    ("POST", "/api/v1/conversations/<conversation_id>/escalate"): Row(
        conv_route("POST", "escalate", {"reason": "customer asked"}),
        roles(admin=200, supervisor=200, agent=(200, 403), bot=200), CONV, World.conversation),
    # agent actions: the holder or a supervisor; an admin's bare token is no agent
    ("POST", "/api/v1/conversations/<conversation_id>/claim"): Row(
        conv_route("POST", "claim"), roles(admin=403, supervisor=409, agent=(200, 403)), CONV, World.conversation),
    ("POST", "/api/v1/conversations/<conversation_id>/messages"): Row(
        conv_route("POST", "messages", {"text": "Hello from us"}),
        roles(admin=403, supervisor=409, agent=(202, 403)), CONV, World.conversation),
    ("POST", "/api/v1/conversations/<conversation_id>/typing"): Row(
        conv_route("POST", "typing", {"typing": True}), roles(admin=403, supervisor=204, agent=(204, 403)), CONV,
        World.conversation),
    ("POST", "/api/v1/conversations/<conversation_id>/release"): Row(
        conv_route("POST", "release"), roles(admin=200, supervisor=200, agent=(200, 403)), CONV, World.conversation),
    ("POST", "/api/v1/conversations/<conversation_id>/transfer"): Row(
        conv_route("POST", "transfer", {"group": "support"}),
        roles(admin=200, supervisor=200, agent=(200, 403)), CONV, World.conversation),
    ("POST", "/api/v1/conversations/<conversation_id>/close"): Row(
        conv_route("POST", "close"), roles(admin=200, supervisor=200, agent=(200, 403)), CONV, World.conversation),
    # media: anyone with a token uploads; a file is seen by whoever sees its conversation (else 404)
    ("POST", "/api/v1/media"): Row(
        lambda w, _: ("POST", "/api/v1/media", {"data": {"file": (io.BytesIO(png()), "dot.png", "image/png")},
                                                "content_type": "multipart/form-data"}),
        roles(admin=201, supervisor=201, agent=201, bot=201)),
    ("GET", "/api/v1/media/<media_id>"): Row(
        lambda w, md: ("GET", f"/api/v1/media/{md}", {}),
        roles(admin=302, supervisor=302, agent=(302, 404), bot=302), CONV, World.media),
    ("GET", "/api/v1/media/<media_id>/link"): Row(
        lambda w, md: ("GET", f"/api/v1/media/{md}/link", {}),
        roles(admin=200, supervisor=200, agent=(200, 404), bot=200), CONV, World.media),
    ("GET", "/api/v1/templates"): Row(lambda w, _: ("GET", "/api/v1/templates", {}),
                                      roles(admin=200, supervisor=200, agent=200, bot=200)),
    # public: the token (any, or none) changes nothing
    ("GET", "/console"): Row(lambda w, _: ("GET", "/console", {}), public(200)),
    ("GET", "/console/"): Row(lambda w, _: ("GET", "/console/", {}), public(200)),
    ("GET", "/console/conversations/<conversation_id>"): Row(
        lambda w, _: ("GET", "/console/conversations/c_any", {}), public(200)),
    ("GET", "/static/<path:filename>"): Row(lambda w, _: ("GET", "/static/console.js", {}), public(200)),
    ("GET", "/healthz"): Row(lambda w, _: ("GET", "/healthz", {}), public(200)),
    ("GET", "/readyz"): Row(lambda w, _: ("GET", "/readyz", {}), public(200)),
    ("GET", "/metrics"): Row(lambda w, _: ("GET", "/metrics", {}), public(200)),
    ("GET", "/openapi.json"): Row(lambda w, _: ("GET", "/openapi.json", {}), public(200)),
    # a media file link is its own credential: unsigned is 403 whoever asks
    ("GET", "/media/files/<path:key>"): Row(lambda w, _: ("GET", f"/media/files/{KEY}", {}), public(403)),
    # webhooks: the provider's signature is the credential, never a token
    ("GET", "/webhooks/whatsapp"): Row(
        lambda w, _: ("GET", "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=7", {}),
        public(200)),
    ("POST", "/webhooks/whatsapp"): Row(lambda w, _: _signed_webhook(w), public(200)),
    ("POST", "/webhooks/wasender"): Row(          # this desk speaks Cloud API: WASender's route is not here
        lambda w, _: ("POST", "/webhooks/wasender", {"data": b"{}", "headers": {"X-Webhook-Signature": "x"}}),
        public(404)),
}


def _signed_webhook(w: World):
    raw, headers = text_webhook(w.wa_id(), "hi")
    return "POST", "/webhooks/whatsapp", {"data": raw, "headers": headers}


def url_map_routes(app) -> set[tuple[str, str]]:
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_route_has_a_row_in_the_matrix(app):
    routes = url_map_routes(app)
    assert routes == set(MATRIX), (f"routes without a row: {sorted(routes - set(MATRIX))}; "
                                   f"rows for no route: {sorted(set(MATRIX) - routes)}")
    for key, row in MATRIX.items():
        assert set(row.expect) == set(ROLES), key


def cells(route) -> list[tuple[str, str | None]]:
    row = MATRIX[route]
    return [(role, target) for role in ROLES for target in row.targets]


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
def test_every_caller_gets_the_expected_status_and_a_refusal_changes_nothing(world, route):
    row = MATRIX[route]
    client = world.app.test_client()
    wrong = []
    fresh: dict = {}            # a target is made again only after a cell changed something
    for role, target in cells(route):
        if row.make_target and target not in fresh:
            fresh[target] = row.make_target(world, target)
            settle(world.app)
        method, path, kwargs = row.call(world, fresh.get(target))
        headers = {**kwargs.pop("headers", {}), **(bearer(world.tokens[role]) if role in world.tokens else {})}
        before = db_state()
        response = client.open(path, method=method, headers=headers, **kwargs)
        status = response.status_code
        body = "" if kwargs.get("buffered") is False else response.get_data(as_text=True)[:200]
        response.close()
        expected = row.status(role, target)
        if status != expected:
            wrong.append(f"{role}/{target}: expected {expected}, got {status} {body}")
        after = db_state()
        changed = {key for key in before if before[key] != after[key]}
        if status >= 400 and changed:
            wrong.append(f"{role}/{target}: refused with {status} but changed {sorted(changed)}")
        if changed or (status < 400 and method != "GET"):
            fresh.pop(target, None)
            settle(world.app)
    assert not wrong, f"{route[0]} {route[1]}:\n" + "\n".join(wrong)


def test_the_matrix_covers_every_route_times_every_caller():
    total = sum(len(cells(route)) for route in MATRIX)
    routes = len(MATRIX)
    print(f"authorization matrix: {routes} routes x {len(ROLES)} callers = {routes * len(ROLES)} route-caller "
          f"pairs, {total} cells with own/other targets")
    assert routes * len(ROLES) <= total
