"""What clients receive is what /openapi.json documents.

For every route in the app's URL map, real requests (signed webhooks, real
tokens and agents, the timers and jobs that really run) produce each
documented success status and at least one error. Every answer on the way is
checked: its status must be documented for the route, its content type must be
the documented one, and a JSON body must validate against the documented schema
(with `$ref`s resolved, OpenAPI's `nullable` honoured, and no field beyond the
documented ones). Error answers must carry one of the route's documented
`error` codes. The HTML console and static files are not in the document; only
their JSON errors are checked.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import timedelta

import orjson
import pytest
from jsonschema import Draft202012Validator
from werkzeug.exceptions import MethodNotAllowed

from models import CallbackRequest, Conversation, Delivery, utcnow
from tests.support import PHONE_NUMBER_ID, TEST_APP_SECRET, run_jobs, text_webhook

ESCALATE = "I want to talk to a human"
WASENDER_SECRET = "wasender-hook-secret"
REF_PREFIX = "#/components/schemas/"

# Routes in the URL map that /openapi.json leaves out on purpose (their JSON errors are still checked).
NOT_IN_OPENAPI = {
    ("/static/<path:filename>", "GET"): "Flask's static files (the console's script and stylesheet), not JSON",
    ("/console", "GET"): "the agents' HTML console; not part of the API contract",
    ("/console/", "GET"): "the agents' HTML console; not part of the API contract",
    ("/console/conversations/<conversation_id>", "GET"): "the console opened on one conversation (HTML)",
    ("/media/files/<path:key>", "GET"): "the filesystem store's signed, expiring file links (any content type, "
                                        "ranges); clients get them from the API, never build them",
}
# Documented answers whose body is not checked against a schema, and why.
BODY_NOT_VALIDATED = {
    ("/api/v1/events", "GET"): "an endless text/event-stream; its status and content type are checked",
}


def openapi_path(rule: str) -> str:
    """`/a/<b>` (or `/a/<path:b>`) as OpenAPI writes it: `/a/{b}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


# -- OpenAPI 3.0 schemas as JSON Schema ----------------------------------------------------------------

def _null_branch(schema) -> bool:
    """apispec writes a nullable nested object as `anyOf: [{$ref}, {"type": "object", "nullable": true}]`:
    that second branch means "or null", not "or any object"."""
    return isinstance(schema, dict) and schema.get("nullable") is True and set(schema) <= {"type", "nullable"}


def json_schema(node):
    """OpenAPI 3.0 → JSON Schema 2020-12: `nullable: true` becomes an explicit null alternative."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node:
        node = {**node, "anyOf": [{"type": "null"} if _null_branch(b) else b for b in node["anyOf"]]}
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


class Contract:
    """Checks real answers against /openapi.json and remembers what each route answered."""

    def __init__(self, app, spec: dict):
        self.spec = spec
        self.urls = app.url_map.bind("baton.test")
        self.components = json_schema(spec["components"])
        self.seen: dict[str, list[tuple[str, int]]] = defaultdict(list)

    def operation(self, rule: str, method: str) -> dict | None:
        return self.spec["paths"].get(openapi_path(rule), {}).get(method.lower())

    def validate(self, body, schema: dict, where: str) -> None:
        validator = Draft202012Validator({"components": self.components, **json_schema(schema)})
        problems = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not problems, f"{where}: the body breaks its documented schema:\n" + "\n".join(
            f"  at {'/'.join(map(str, p.absolute_path)) or '(top)'}: {p.message}" for p in problems[:10])

    def _rule(self, method: str, path: str) -> tuple[str, bool]:
        """The URL rule `path` falls under, and whether it has `method`."""
        try:
            rule, _ = self.urls.match(path, method=method, return_rule=True)
            return rule.rule, True
        except MethodNotAllowed as refused:
            rule, _ = self.urls.match(path, method=sorted(refused.valid_methods)[0], return_rule=True)
            return rule.rule, False

    def check(self, method: str, path: str, response) -> None:
        rule, has_method = self._rule(method, path.split("?", 1)[0])
        status = response.status_code
        self.seen[rule].append((method, status))
        where = f"{method} {path} → {status}"
        operation = self.operation(rule, method) if has_method else None
        if operation is None:           # not in the document: only its errors are ours to check
            if status >= 400:
                assert response.mimetype == "application/json", where
                self.validate(response.get_json(), {"$ref": REF_PREFIX + "Error"}, where)
            return
        documented = operation["responses"].get(str(status))
        assert documented is not None, (f"{where}: status {status} is not documented for this route "
                                        f"(documented: {sorted(operation['responses'])}); body: "
                                        f"{response.get_data(as_text=True)[:300]}")
        content = documented.get("content")
        if not content:
            assert response.get_data() == b"", f"{where}: documented without a body"
            return
        [(content_type, media)] = content.items()
        assert response.mimetype == content_type.split(";")[0].strip(), f"{where}: {response.content_type}"
        if (rule, method) in BODY_NOT_VALIDATED or not content_type.startswith("application/json"):
            return
        body = response.get_json()
        self.validate(body, media["schema"], where)
        codes = documented.get("x-error-codes")
        if codes is not None:
            assert body["error"] in codes, f"{where}: error code {body['error']!r} is not one of {codes}"


# -- the world the requests run in ------------------------------------------------------------------------

def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def cloud_api_image(wa_id: str) -> tuple[bytes, dict]:
    """A Cloud API image message, signed like Meta signs."""
    import hashlib
    import hmac

    body = {"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Pia"}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": f"wamid.IMG{time.time_ns()}", "timestamp": str(int(time.time())),
                          "type": "image", "image": {"id": "1479537139650973", "mime_type": "image/jpeg",
                                                     "sha256": "NDI1ZTk1NGQ2", "caption": "my receipt"}}]}}]}]}
    raw = orjson.dumps(body)
    signature = hmac.new(TEST_APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}


def wasender_event(wa_id: str, *, text: str | None = None, image: bool = False) -> bytes:
    key = {"id": f"3EB0{time.time_ns()}", "fromMe": False, "remoteJid": f"{wa_id}@s.whatsapp.net",
           "cleanedSenderPn": wa_id}
    if image:
        message = {"imageMessage": {"url": "https://mmg.whatsapp.net/o1/v/t62.7118-24/abc.enc",
                                    "mimetype": "image/jpeg", "fileSha256": "ZmlsZXNoYTI1Ng==",
                                    "mediaKey": "bWVkaWFrZXk=", "caption": "the broken part"}}
        item = {"key": key, "message": message, "pushName": "Rita"}
    else:
        item = {"key": key, "messageBody": text, "message": {"conversation": text}, "pushName": "Rita"}
    return orjson.dumps({"event": "messages.upsert", "timestamp": int(time.time()), "data": {"messages": [item]}})


class World:
    """One test's apps, tokens and agents; every request goes through the contract check."""

    def __init__(self, request, app, contract: Contract):
        self.request, self.app, self.contract = request, app, contract
        self.rt = app.extensions["baton"]
        self.clients: dict[int, object] = {}
        from models import ApiToken

        self.bot = ApiToken.issue("n8n", "bot")[1]
        self.admin = ApiToken.issue("root", "admin")[1]

    # requests
    def call(self, method: str, path: str, expect: int, *, token: str | None = None, app=None, json=None,
             data=None, headers=None, buffered: bool = True):
        app = app or self.app
        client = self.clients.get(id(app)) or self.clients.setdefault(id(app), app.test_client())
        response = client.open(path, method=method, json=json, data=data, buffered=buffered,
                               headers={**bearer(token), **(headers or {})})
        try:
            assert response.status_code == expect, (f"{method} {path}: expected {expect}, got "
                                                    f"{response.status_code}: {response.get_data(as_text=True)[:500]}"
                                                    if buffered else f"{method} {path}: {response.status_code}")
            self.contract.check(method, path, response)
        finally:
            if not buffered:
                response.close()
        return response

    def get(self, path, expect=200, **kwargs):
        return self.call("GET", path, expect, **kwargs)

    def post(self, path, expect=200, **kwargs):
        return self.call("POST", path, expect, **kwargs)

    # more apps on the same database and Redis prefix
    def app_with(self, **settings):
        from jobs.context import set_runtime

        app = self.request.getfixturevalue("app_factory")(**settings)
        set_runtime(app.extensions["baton"])
        return app

    def wasender_app(self):
        fake = self.request.getfixturevalue("wasender_api")
        return self.app_with(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                             WASENDER_API_KEY=fake.api_key, WASENDER_API_BASE=fake.url)

    @property
    def n8n(self):
        return self.request.getfixturevalue("n8n")

    def work(self, app=None) -> None:
        run_jobs((app or self.app).extensions["baton"])

    # customers and agents
    def customer_says(self, text: str, wa_id: str = "15551230001", app=None) -> Conversation:
        raw, headers = text_webhook(wa_id, text)
        self.post("/webhooks/whatsapp", data=raw, headers=headers, app=app)
        self.work(app)
        return self.conversation_of(wa_id)

    @staticmethod
    def conversation_of(wa_id: str) -> Conversation:
        from models import Contact

        return Conversation.select().join(Contact).where(Contact.wa_id == wa_id).get()

    def agent(self, name: str, *, groups=("support",), role: str = "agent", online: bool = True) -> tuple:
        from routing.agents import create_agent, set_status

        agent, token = create_agent(name, role, list(groups), 5)
        if online:
            set_status(self.rt.presence, agent, "online")
        return agent, token

    def waiting_for(self, wa_id: str) -> Conversation:
        """A customer asks for a human (and is offered to whoever is online)."""
        conv = self.customer_says(ESCALATE, wa_id)
        assert conv.state == "PENDING_AGENT"
        return conv

    def held_by(self, agent_token: str, wa_id: str) -> Conversation:
        conv = self.waiting_for(wa_id)
        self.post(f"/api/v1/conversations/{conv.id}/claim", token=agent_token)
        return Conversation.get_by_id(conv.id)


@pytest.fixture
def world(request, app, client):
    spec = client.get("/openapi.json").json
    contract = Contract(app, spec)
    return World(request, app, contract)


# -- scenarios: one per route, each producing every documented success and some errors ------------------

SCENARIOS = {}


def scenario(rule: str, method: str):
    def register(fn):
        SCENARIOS[(rule, method)] = fn
        return fn
    return register


@scenario("/webhooks/whatsapp", "GET")
def _verify_subscription(w: World):
    ok = w.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444")
    assert ok.get_data(as_text=True) == "1158201444"
    w.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1", 403)
    wasender = w.wasender_app()
    w.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1", 404, app=wasender)


@scenario("/webhooks/whatsapp", "POST")
def _receive_cloud_api(w: World):
    raw, headers = text_webhook("15551230002", "hello")
    assert w.post("/webhooks/whatsapp", data=raw, headers=headers).json["messages"] == 1
    raw, headers = cloud_api_image("15551230002")
    w.post("/webhooks/whatsapp", data=raw, headers=headers)
    w.post("/webhooks/whatsapp", 401, data=raw, headers={**headers, "X-Hub-Signature-256": "sha256=00"})
    raw, headers = text_webhook("15551230002", "hello")
    w.post("/webhooks/whatsapp", 400, data=b"[1, 2]", headers={
        **headers, "X-Hub-Signature-256": text_webhook_signature(b"[1, 2]")})
    small = w.app_with(MAX_WEBHOOK_BYTES=64)
    w.post("/webhooks/whatsapp", 413, data=raw, headers=headers, app=small)
    wasender = w.wasender_app()
    w.post("/webhooks/whatsapp", 404, data=raw, headers=headers, app=wasender)


def text_webhook_signature(raw: bytes) -> str:
    import hashlib
    import hmac

    return "sha256=" + hmac.new(TEST_APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()


@scenario("/webhooks/wasender", "POST")
def _receive_wasender(w: World):
    wasender = w.wasender_app()
    signed = {"Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET}
    w.post("/webhooks/wasender", data=wasender_event("5551234567", text="hello"), headers=signed, app=wasender)
    w.post("/webhooks/wasender", data=wasender_event("5551234567", image=True), headers=signed, app=wasender)
    w.post("/webhooks/wasender", 401, data=wasender_event("5551234567", text="hi"),
           headers={**signed, "X-Webhook-Signature": "guess"}, app=wasender)
    w.post("/webhooks/wasender", 400, data=b'{"data": {"x": 1}}', headers=signed, app=wasender)
    w.post("/webhooks/wasender", 404, data=wasender_event("5551234567", text="hi"), headers=signed)
    # What WASender's media looks like to a client reading the history.
    conv = w.conversation_of("5551234567")
    items = w.get(f"/api/v1/conversations/{conv.id}/messages", token=w.bot, app=wasender).json["items"]
    media = next(m["media"] for m in items if m["type"] == "image")
    assert media["type"] == "image" and media["id"].startswith("md_") and "media_key" not in media


@scenario("/api/v1/media/<media_id>", "GET")
def _get_media(w: World):
    from models import Media
    from tests.media_support import TestStorage, cloud_media_webhook

    graph = w.request.getfixturevalue("graph_api")
    app = w.app_with(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph.access_token,
                     WHATSAPP_API_BASE=graph.api_base)
    storage = app.extensions["baton"].storage = TestStorage(w.request.getfixturevalue("tmp_path"))
    photo = b"\x89PNG a receipt"
    graph.add_media("77001", photo, "image/png")
    raw, headers = cloud_media_webhook("15551230099", "image", "77001", photo, mime="image/png")
    w.post("/webhooks/whatsapp", data=raw, headers=headers, app=app)
    media_id = Media.get().id
    pending = w.get(f"/api/v1/media/{media_id}", 409, token=w.bot, app=app)
    assert pending.json["details"]["status"] == "pending" and pending.headers["Retry-After"]
    w.work(app)
    found = w.get(f"/api/v1/media/{media_id}", 302, token=w.bot, app=app)
    assert storage.read_signed(app, found.headers["Location"])[0] == photo
    _, bo = w.agent("bo", groups=("billing",))
    w.get(f"/api/v1/media/{media_id}", 404, token=bo, app=app)          # not bo's conversation
    w.get("/api/v1/media/md_nope", 404, token=w.bot, app=app)
    w.get(f"/api/v1/media/{media_id}", 401, app=app)
    storage.down = True
    w.get(f"/api/v1/media/{media_id}", 503, token=w.bot, app=app)


@scenario("/api/v1/media", "POST")
def _upload_media(w: World):
    from io import BytesIO

    from tests.upload_files import png

    def form(content: bytes, mime: str, **fields):
        return {"file": (BytesIO(content), "shot.png", mime), **fields}

    done = w.post("/api/v1/media", 201, token=w.bot, data=form(png(), "image/png"))
    assert done.json["status"] == "stored" and done.json["type"] == "image"
    w.post("/api/v1/media", 415, token=w.bot, data=form(png(), "image/jpeg"))
    w.post("/api/v1/media", 413, token=w.bot, data=form(png(), "image/png"),
           app=w.app_with(MEDIA_UPLOAD_MAX_BYTES=16))
    w.post("/api/v1/media", 422, token=w.bot, data=form(png(), "image/png", type="gif"))
    w.post("/api/v1/media", 422, token=w.bot, data={"type": "image"}, headers={"Content-Type": "multipart/form-data"})
    w.post("/api/v1/media", 401, data=form(png(), "image/png"))


@scenario("/api/v1/media/<media_id>/link", "GET")
def _media_link(w: World):
    from io import BytesIO

    from tests.upload_files import png

    _, ana = w.agent("ana")
    _, bo = w.agent("bo")
    media_id = w.post("/api/v1/media", 201, token=ana, data={"file": (BytesIO(png()), "a.png", "image/png")}).json["id"]
    link = w.get(f"/api/v1/media/{media_id}/link", token=ana).json
    assert link["url"].startswith("/media/files/")
    w.get(f"/api/v1/media/{media_id}/link", 404, token=bo)            # not sent yet: only its uploader's
    w.get(f"/api/v1/media/{media_id}/link", 401)


@scenario("/api/v1/bot/replies", "POST")
def _bot_replies(w: World):
    n8n = w.n8n
    app = w.app_with(N8N_BOT_URL=n8n.url_for("bot"), N8N_NOTIFY_URL=n8n.url_for("notify"))
    raw, headers = text_webhook("15551230003", "hello")
    w.post("/webhooks/whatsapp", data=raw, headers=headers, app=app)
    w.work(app)
    conv = w.conversation_of("15551230003")
    first_turn = n8n.received("bot.turn")[-1]["json"]["turn_id"]
    queued = w.post("/api/v1/bot/replies", 202, token=w.bot, app=app,
                    json={"conversation_id": conv.id, "turn_id": first_turn, "text": "Hi! How can I help?"})
    assert queued.json["status"] == "queued" and queued.json["message"]["text"] == "Hi! How can I help?"
    w.work(app)
    raw, headers = text_webhook("15551230003", "my order never came")
    w.post("/webhooks/whatsapp", data=raw, headers=headers, app=app)
    w.work(app)
    second_turn = n8n.received("bot.turn")[-1]["json"]["turn_id"]
    escalated = w.post("/api/v1/bot/replies", 200, token=w.bot, app=app,
                       json={"conversation_id": conv.id, "turn_id": second_turn, "escalate": True,
                             "reason": "order_missing", "urgency": 0.7})
    assert escalated.json["status"] == "escalated"
    stale = w.post("/api/v1/bot/replies", 409, token=w.bot, app=app,
                   json={"conversation_id": conv.id, "turn_id": first_turn, "text": "too late"})
    assert stale.json["error"] == "stale_turn"
    w.post("/api/v1/bot/replies", 404, token=w.bot, app=app,
           json={"conversation_id": "c_nope", "turn_id": "t_nope", "text": "hi"})
    w.post("/api/v1/bot/replies", 422, token=w.bot, app=app, json={"conversation_id": conv.id})
    w.post("/api/v1/bot/replies", 400, token=w.bot, app=app, data=b"not json",
           headers={"Content-Type": "application/json"})
    w.post("/api/v1/bot/replies", 403, token=w.admin, app=app, json={})
    w.post("/api/v1/bot/replies", 401, app=app, json={})


@scenario("/api/v1/conversations", "GET")
def _list_conversations(w: World):
    w.customer_says("hello", "15551230004")
    w.customer_says(ESCALATE, "15551230005")
    page = w.get("/api/v1/conversations?limit=1", token=w.bot).json
    assert len(page["items"]) == 1 and page["next_cursor"]
    w.get(f"/api/v1/conversations?limit=1&cursor={page['next_cursor']}", token=w.bot)
    _, ana = w.agent("ana")
    assert w.get("/api/v1/conversations?state=PENDING_AGENT", token=ana).json["items"]
    w.get("/api/v1/conversations?cursor=bm9wZQ", 400, token=w.bot)
    w.get("/api/v1/conversations?state=SLEEPING", 422, token=w.bot)
    w.get("/api/v1/conversations", 401)


@scenario("/api/v1/conversations/<conversation_id>", "GET")
def _get_conversation(w: World):
    conv = w.customer_says(ESCALATE, "15551230006")
    body = w.get(f"/api/v1/conversations/{conv.id}", token=w.bot).json
    assert body["escalation"]["reason"] == "explicit_request"     # the nested, nullable object, filled
    quiet = w.customer_says("hello", "15551230007")
    assert w.get(f"/api/v1/conversations/{quiet.id}", token=w.bot).json["escalation"] is None
    _, bo = w.agent("bo", groups=("billing",))
    w.get(f"/api/v1/conversations/{quiet.id}", 403, token=bo)
    w.get("/api/v1/conversations/c_nope", 404, token=w.bot)
    w.get(f"/api/v1/conversations/{conv.id}", 401, token="bt_not_a_token")


@scenario("/api/v1/conversations/<conversation_id>/messages", "GET")
def _list_messages(w: World):
    conv = w.customer_says("hello", "15551230008")
    raw, headers = cloud_api_image("15551230008")
    w.post("/webhooks/whatsapp", data=raw, headers=headers)
    w.work()
    page = w.get(f"/api/v1/conversations/{conv.id}/messages?limit=2", token=w.bot).json
    w.get(f"/api/v1/conversations/{conv.id}/messages?after={page['next_cursor']}", token=w.bot)
    items = w.get(f"/api/v1/conversations/{conv.id}/messages", token=w.bot).json["items"]
    assert {m["direction"] for m in items} == {"in", "out"}
    media = next(m for m in items if m["type"] == "image")["media"]
    assert media["type"] == "image" and media["mime_type"] == "image/jpeg" and "provider_media_id" not in media
    w.get(f"/api/v1/conversations/{conv.id}/messages?after=yesterday", 400, token=w.bot)
    w.get(f"/api/v1/conversations/{conv.id}/messages?after=m_nope", 404, token=w.bot)
    w.get(f"/api/v1/conversations/{conv.id}/messages?limit=0", 422, token=w.bot)


@scenario("/api/v1/conversations/<conversation_id>/escalate", "POST")
def _escalate(w: World):
    conv = w.customer_says("hello", "15551230009")
    path = f"/api/v1/conversations/{conv.id}/escalate"
    assert w.post(path, token=w.bot, json={"reason": "bot", "urgency": 0.4, "note": "asked twice"}).json["changed"]
    assert w.post(path, token=w.bot, json={"reason": "bot"}).json["changed"] is False
    w.post(path, 422, token=w.bot, json={"urgency": 2})
    w.post("/api/v1/conversations/c_nope/escalate", 404, token=w.bot, json={"reason": "bot"})


@scenario("/api/v1/conversations/<conversation_id>/claim", "POST")
def _claim(w: World):
    _, ana = w.agent("ana")
    _, sue = w.agent("sue", role="supervisor", online=False)
    conv = w.waiting_for("15551230010")
    claimed = w.post(f"/api/v1/conversations/{conv.id}/claim", token=ana).json
    assert claimed["state"] == "AGENT_CONTROLLED"
    assert w.post(f"/api/v1/conversations/{conv.id}/claim", 409, token=sue).json["error"] == "already_assigned"
    w.post("/api/v1/conversations/c_nope/claim", 404, token=ana)
    w.post(f"/api/v1/conversations/{conv.id}/claim", 403, token=w.bot)


@scenario("/api/v1/conversations/<conversation_id>/messages", "POST")
def _send_message(w: World):
    _, ana = w.agent("ana")
    _, bo = w.agent("bo", online=False)
    conv = w.waiting_for("15551230011")
    sent = w.post(f"/api/v1/conversations/{conv.id}/messages", 202, token=ana, json={"text": "Hi, Ana here."})
    assert sent.json["message"]["status"] == "queued" and sent.json["message"]["sender"] == "agent"
    w.work()
    w.post(f"/api/v1/conversations/{conv.id}/messages", 422, token=ana, json={"media_id": "md_1"})
    from io import BytesIO

    from tests.upload_files import png
    media_id = w.post("/api/v1/media", 201, token=ana, data={"file": (BytesIO(png()), "a.png", "image/png")}).json["id"]
    photo = w.post(f"/api/v1/conversations/{conv.id}/messages", 202, token=ana,
                   json={"media_id": media_id, "caption": "this one"}).json["message"]
    assert photo["type"] == "image" and photo["media"]["id"] == media_id and photo["text"] == "this one"
    w.post(f"/api/v1/conversations/{conv.id}/messages", 422, token=ana, json={"text": "a", "media_id": "md_1"})
    w.post(f"/api/v1/conversations/{conv.id}/messages", 403, token=bo, json={"text": "mine now?"})


@scenario("/api/v1/conversations/<conversation_id>/typing", "POST")
def _typing(w: World):
    _, ana = w.agent("ana")
    conv = w.held_by(ana, "15551230012")
    w.post(f"/api/v1/conversations/{conv.id}/typing", 204, token=ana, json={"typing": True})
    w.post(f"/api/v1/conversations/{conv.id}/typing", 422, token=ana, json={})
    w.post("/api/v1/conversations/c_nope/typing", 404, token=ana, json={"typing": False})


@scenario("/api/v1/conversations/<conversation_id>/release", "POST")
def _release(w: World):
    _, ana = w.agent("ana")
    _, sue = w.agent("sue", role="supervisor", online=False)
    conv = w.held_by(ana, "15551230013")
    released = w.post(f"/api/v1/conversations/{conv.id}/release", token=ana, json={"note": "sorted"}).json
    assert released["state"] == "BOT_CONTROLLED" and released["cooldown_remaining"] > 0
    w.post(f"/api/v1/conversations/{conv.id}/release", 409, token=sue)
    w.post(f"/api/v1/conversations/{conv.id}/release", 403, token=ana)


@scenario("/api/v1/conversations/<conversation_id>/transfer", "POST")
def _transfer(w: World):
    _, ana = w.agent("ana")
    _, sue = w.agent("sue", role="supervisor", online=False)
    conv = w.held_by(ana, "15551230014")
    moved = w.post(f"/api/v1/conversations/{conv.id}/transfer", token=ana, json={"group": "billing"}).json
    assert moved["state"] == "PENDING_AGENT" and moved["group"] == "billing"
    w.post(f"/api/v1/conversations/{conv.id}/transfer", 404, token=sue, json={"agent_id": "a_nope"})
    w.post(f"/api/v1/conversations/{conv.id}/transfer", 422, token=sue, json={"agent_id": "a_1", "group": "x"})


@scenario("/api/v1/conversations/<conversation_id>/close", "POST")
def _close(w: World):
    _, ana = w.agent("ana")
    _, sue = w.agent("sue", role="supervisor", online=False)
    conv = w.held_by(ana, "15551230015")
    assert w.post(f"/api/v1/conversations/{conv.id}/close", token=ana, json={"reason": "done"}).json["state"] == \
        "CLOSED"
    assert w.post(f"/api/v1/conversations/{conv.id}/close", 409, token=sue).json["error"] == "wrong_state"


@scenario("/api/v1/agents", "GET")
def _list_agents(w: World):
    _, sue = w.agent("sue", role="supervisor", online=False)
    _, ana = w.agent("ana")
    w.agent("bo", groups=("billing",), online=False)
    page = w.get("/api/v1/agents?limit=2", token=sue).json
    assert page["next_cursor"] and len(page["items"]) == 2
    w.get(f"/api/v1/agents?cursor={page['next_cursor']}", token=sue)
    w.get("/api/v1/agents?group=billing", token=w.admin)
    w.get("/api/v1/agents?cursor=eA", 400, token=sue)
    w.get("/api/v1/agents?group=no%20spaces", 422, token=sue)
    w.get("/api/v1/agents", 403, token=ana)


@scenario("/api/v1/agents/online", "GET")
def _list_online_agents(w: World):
    _, ana = w.agent("ana")
    w.agent("bo", groups=("billing",), online=False)
    answer = w.get("/api/v1/agents/online", token=ana).json
    assert [a["name"] for a in answer["items"]] == ["ana"] and answer["groups"] == ["billing", "support"]
    w.get("/api/v1/agents/online", 403, token=w.bot)
    w.get("/api/v1/agents/online", 401)


@scenario("/api/v1/agents", "POST")
def _create_agent(w: World):
    created = w.post("/api/v1/agents", 201, token=w.admin,
                     json={"name": "Dee", "role": "supervisor", "groups": ["support", "vip"], "max_concurrent": 3})
    assert created.json["token"].startswith("bt_") and created.json["online"] is False
    w.post("/api/v1/agents", 422, token=w.admin, json={"role": "agent"})
    w.post("/api/v1/agents", 403, token=created.json["token"], json={"name": "Eve"})


@scenario("/api/v1/agents/<agent_id>/deactivate", "POST")
def _deactivate_agent(w: World):
    ana, ana_token = w.agent("ana")
    held = w.held_by(ana_token, "15551230031")
    w.agent("bo")
    done = w.post(f"/api/v1/agents/{ana.id}/deactivate", token=w.admin).json
    assert done["agent"]["deactivated_at"] and done["tokens_revoked"] == 1
    assert done["conversations_requeued"] == 1 and Conversation.get_by_id(held.id).assigned_agent_id != ana.id
    again = w.post(f"/api/v1/agents/{ana.id}/deactivate", token=w.admin).json
    assert (again["tokens_revoked"], again["conversations_requeued"]) == (0, 0)
    w.post("/api/v1/agents/a_nope/deactivate", 404, token=w.admin)
    boss, boss_token = w.agent("boss", role="admin")
    w.post(f"/api/v1/agents/{boss.id}/deactivate", 409, token=boss_token)
    w.post(f"/api/v1/agents/{ana.id}/deactivate", 403, token=w.bot)


@scenario("/api/v1/tokens", "GET")
def _list_tokens(w: World):
    assert {t["role"] for t in w.get("/api/v1/tokens", token=w.admin).json["items"]} >= {"admin", "bot"}
    w.get("/api/v1/tokens?role=bot&revoked=true&limit=1", token=w.admin)
    w.get("/api/v1/tokens?role=root", 422, token=w.admin)
    w.get("/api/v1/tokens", 403, token=w.bot)


@scenario("/api/v1/tokens/<token_id>", "DELETE")
def _revoke_token(w: World):
    from models import ApiToken

    row, secret = ApiToken.issue("spare", "bot")
    assert w.call("DELETE", f"/api/v1/tokens/{row.id}", 200, token=w.admin).json["revoked_at"]
    w.call("DELETE", f"/api/v1/tokens/{row.id}", 200, token=w.admin)
    w.get("/api/v1/conversations", 401, token=secret)
    w.call("DELETE", "/api/v1/tokens/tk_nope", 404, token=w.admin)
    own = ApiToken.select().where(ApiToken.role == "admin").get()
    w.call("DELETE", f"/api/v1/tokens/{own.id}", 409, token=w.admin)
    w.call("DELETE", f"/api/v1/tokens/{row.id}", 403, token=w.bot)


@scenario("/api/v1/agents/me", "GET")
def _get_me(w: World):
    _, ana = w.agent("ana")
    assert w.get("/api/v1/agents/me", token=ana).json["name"] == "ana"
    assert w.get("/api/v1/agents/me", 403, token=w.admin).json["error"] == "not_an_agent"


@scenario("/api/v1/agents/me", "PATCH")
def _set_my_status(w: World):
    _, ana = w.agent("ana", online=False)
    w.customer_says(ESCALATE, "15551230016")            # waits; offered to ana once she is online
    assert w.call("PATCH", "/api/v1/agents/me", 200, token=ana, json={"status": "online"}).json["online"]
    assert w.call("PATCH", "/api/v1/agents/me", 200, token=ana, json={"status": "away"}).json["status"] == "away"
    w.call("PATCH", "/api/v1/agents/me", 422, token=ana, json={"status": "busy"})
    w.call("PATCH", "/api/v1/agents/me", 403, token=w.admin, json={"status": "online"})


@scenario("/api/v1/agents/me/heartbeat", "POST")
def _heartbeat(w: World):
    _, ana = w.agent("ana")
    assert w.post("/api/v1/agents/me/heartbeat", token=ana).json["online"] is True
    w.post("/api/v1/agents/me/heartbeat", 403, token=w.admin)
    w.post("/api/v1/agents/me/heartbeat", 401)


def _a_callback_request(w: World) -> CallbackRequest:
    """Nobody takes a waiting customer in time under the collect_callback policy."""
    from jobs import timers

    app = w.app_with(PENDING_TIMEOUT_POLICY="collect_callback")
    conv = w.customer_says(ESCALATE, "15551230017", app=app)
    Conversation.update(pending_since=utcnow() - timedelta(seconds=301)).where(Conversation.id == conv.id).execute()
    assert timers.handoff_timers()["pending_timeouts"] == 1
    w.work(app)
    return CallbackRequest.get(CallbackRequest.conversation == conv.id)


@scenario("/api/v1/callbacks", "GET")
def _list_callbacks(w: World):
    callback = _a_callback_request(w)
    _, ana = w.agent("ana", online=False)
    [item] = w.get("/api/v1/callbacks", token=ana).json["items"]
    assert item["id"] == callback.id and item["done_at"] is None
    w.get("/api/v1/callbacks?status=done", token=ana)
    w.get("/api/v1/callbacks?status=maybe", 422, token=ana)
    w.get("/api/v1/callbacks", 403, token=w.bot)


@scenario("/api/v1/callbacks/<callback_id>/done", "POST")
def _callback_done(w: World):
    callback = _a_callback_request(w)
    _, ana = w.agent("ana", online=False)
    _, bo = w.agent("bo", groups=("billing",), online=False)
    w.post(f"/api/v1/callbacks/{callback.id}/done", 403, token=bo, json={})
    done = w.post(f"/api/v1/callbacks/{callback.id}/done", token=ana, json={"note": "called, all good"}).json
    assert done["status"] == "done" and done["done_by"]
    w.post(f"/api/v1/callbacks/{callback.id}/done", token=ana)                  # again: unchanged
    w.post("/api/v1/callbacks/cb_nope/done", 404, token=ana)


@scenario("/api/v1/events", "GET")
def _stream_events(w: World):
    _, ana = w.agent("ana")
    w.get("/api/v1/events", token=ana, buffered=False)
    w.get("/api/v1/events?since=yesterday", 422, token=ana)
    w.get("/api/v1/events", 403, token=w.bot)
    w.get("/api/v1/events", 401)


@scenario("/api/v1/templates", "GET")
def _list_templates(w: World):
    from config import ROOT

    _, ana = w.agent("ana", online=False)
    assert w.get("/api/v1/templates", token=ana).json["configured"] is False
    listed = w.app_with(TEMPLATES_FILE=str(ROOT / "templates.example.json"))
    assert w.get("/api/v1/templates", token=w.bot, app=listed).json["items"]
    assert w.get("/api/v1/templates", token=ana, app=w.wasender_app()).json["account_templates"] == "unsupported"
    graph = w.request.getfixturevalue("graph_api")
    graph.set_templates("WABA-1", [{"id": "1", "name": "hello", "language": "en", "status": "APPROVED",
                                    "category": "UTILITY", "components": [{"type": "BODY", "text": "Hi {{1}}"}]}])
    cloud = dict(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph.access_token, WHATSAPP_VERIFY_TOKEN="v",
                 WHATSAPP_API_BASE=graph.api_base, TEMPLATES_FILE=str(ROOT / "templates.example.json"))
    both = w.get("/api/v1/templates", token=ana, app=w.app_with(**cloud, WHATSAPP_WABA_ID="WABA-1")).json
    assert (both["sources"], both["items"][-1]["source"]) == (["file", "whatsapp_business_account"],
                                                            "whatsapp_business_account")
    down = w.get("/api/v1/templates", token=ana, app=w.app_with(**cloud, WHATSAPP_WABA_ID="WABA-2")).json
    assert (down["account_templates"], down["sources"]) == ("unavailable", ["file"]) and down["note"]
    w.get("/api/v1/templates", 401, app=listed)
    conv = w.held_by(ana, "15551230031")
    assert w.post(f"/api/v1/conversations/{conv.id}/messages", 422, token=ana, app=listed, json={
        "template": {"name": "follow_up", "language": "en_US"}}).json["error"] == "bad_template_components"
    assert w.post(f"/api/v1/conversations/{conv.id}/messages", 422, token=ana, app=listed, json={
        "template": {"name": "nope", "language": "en_US"}}).json["error"] == "unknown_template"


@scenario("/api/v1/admin/outbox", "GET")
def _outbox(w: World):
    w.customer_says("hello", "15551230018")
    [entry] = w.get("/api/v1/admin/outbox", token=w.admin).json["items"]
    assert entry["to"] == "15551230018"
    w.get("/api/v1/admin/outbox?limit=500", 422, token=w.admin)
    w.get("/api/v1/admin/outbox", 403, token=w.bot)


def _failed_delivery(w: World):
    n8n = w.n8n
    app = w.app_with(N8N_NOTIFY_URL=n8n.url_for("notify"), EVENT_MAX_ATTEMPTS=1)
    n8n.fail_next(1, 500, {"message": "down"})
    w.customer_says(ESCALATE, "15551230019", app=app)
    w.work(app)
    return app, Delivery.get(Delivery.status == "failed")


@scenario("/api/v1/admin/deliveries", "GET")
def _deliveries(w: World):
    _, failed = _failed_delivery(w)
    [item] = w.get("/api/v1/admin/deliveries?status=failed", token=w.admin).json["items"]
    assert item["id"] == failed.id and item["last_error"]
    w.get("/api/v1/admin/deliveries", token=w.admin)
    w.get("/api/v1/admin/deliveries?status=lost", 422, token=w.admin)
    w.get("/api/v1/admin/deliveries", 401)


def dead_letter(w: World):
    """A customer's message whose routing raises, set aside at its first failure
    (ROUTE_MAX_ATTEMPTS=1); the fault is gone afterwards. Returns (app, dead letter)."""
    import routing.inbound
    from models import DeadLetter

    monkeypatch = w.request.getfixturevalue("monkeypatch")
    real = routing.inbound.decide

    def decide(view, msg, policy, now):
        if msg.text == "poison":
            raise ValueError("cannot route this one")
        return real(view, msg, policy, now)
    monkeypatch.setattr(routing.inbound, "decide", decide)
    app = w.app_with(ROUTE_MAX_ATTEMPTS=1)
    w.customer_says("poison", "15551239999", app=app)
    monkeypatch.setattr(routing.inbound, "decide", real)
    return app, DeadLetter.get()


@scenario("/api/v1/admin/dead-letters", "GET")
def _dead_letters(w: World):
    app, letter = dead_letter(w)
    [item] = w.get("/api/v1/admin/dead-letters", token=w.admin, app=app).json["items"]
    assert item["id"] == letter.id
    w.get("/api/v1/admin/dead-letters?status=retried", token=w.admin, app=app)
    w.get("/api/v1/admin/dead-letters?status=all&limit=5", token=w.admin, app=app)
    w.get("/api/v1/admin/dead-letters?status=lost", 422, token=w.admin, app=app)
    w.get("/api/v1/admin/dead-letters", 403, token=w.bot, app=app)
    w.get("/api/v1/admin/dead-letters", 401, app=app)


@scenario("/api/v1/admin/dead-letters/<dead_letter_id>/retry", "POST")
def _dead_letter_retry(w: World):
    app, letter = dead_letter(w)
    assert w.post(f"/api/v1/admin/dead-letters/{letter.id}/retry", token=w.admin, app=app).json["retried_at"]
    w.post(f"/api/v1/admin/dead-letters/{letter.id}/retry", 409, token=w.admin, app=app)
    w.post("/api/v1/admin/dead-letters/dlq_nope/retry", 404, token=w.admin, app=app)
    w.post(f"/api/v1/admin/dead-letters/{letter.id}/retry", 403, token=w.bot, app=app)
    w.post(f"/api/v1/admin/dead-letters/{letter.id}/retry", 401, app=app)


@scenario("/api/v1/admin/deliveries/<delivery_id>/replay", "POST")
def _replay(w: World):
    app, failed = _failed_delivery(w)
    assert w.post(f"/api/v1/admin/deliveries/{failed.id}/replay", token=w.admin, app=app).json["status"] == \
        "pending"
    w.post(f"/api/v1/admin/deliveries/{failed.id}/replay", 409, token=w.admin, app=app)
    w.post("/api/v1/admin/deliveries/dl_nope/replay", 404, token=w.admin, app=app)
    w.work(app)


@scenario("/healthz", "GET")
def _healthz(w: World):
    w.get("/healthz")
    w.post("/healthz", 405)


@scenario("/readyz", "GET")
def _readyz(w: World):
    w.get("/readyz")
    assert w.get("/readyz", 503, app=w.app_with(REDIS_URL="redis://127.0.0.1:1/0")).headers["Retry-After"]


@scenario("/metrics", "GET")
def _metrics(w: World):
    assert "baton_conversations" in w.get("/metrics").get_data(as_text=True)
    guarded = w.app_with(METRICS_TOKEN="m3tr1cs")
    w.get("/metrics", 401, app=guarded)
    w.get("/metrics", 200, app=guarded, headers={"Authorization": "Bearer m3tr1cs"})


@scenario("/openapi.json", "GET")
def _openapi(w: World):
    assert w.get("/openapi.json").json["openapi"] == "3.0.3"
    w.post("/openapi.json", 405)


@scenario("/media/files/<path:key>", "GET")
def _media_file(w: World):
    import hashlib

    from integrations.storage import content_key

    data = b"%PDF-1.4 the invoice"
    key = content_key(hashlib.sha256(data).hexdigest())
    w.rt.storage.put(key, data, "application/pdf")
    url = w.rt.storage.signed_url(key, ttl=60, content_type="application/pdf", filename="invoice.pdf")
    assert w.get(url).get_data() == data
    assert w.get(url, 206, headers={"Range": "bytes=0-3"}).get_data() == b"%PDF"
    w.get(url, 416, headers={"Range": "bytes=100-"})
    w.get(url.replace("?t=", "?t=x"), 403)
    w.get("/media/files/..%2F..%2Fetc%2Fpasswd", 403)
    w.get(url.split("?")[0], 403)
    w.post(url, 405)


@scenario("/static/<path:filename>", "GET")
def _static(w: World):
    w.get("/static/console.js")
    w.get("/static/no-such-file.js", 404)


@scenario("/console", "GET")
def _console(w: World):
    w.get("/console")
    w.post("/console", 405)


@scenario("/console/", "GET")
def _console_slash(w: World):
    w.get("/console/")
    w.call("DELETE", "/console/", 405)


@scenario("/console/conversations/<conversation_id>", "GET")
def _console_conversation(w: World):
    w.get("/console/conversations/c_anything")
    w.post("/console/conversations/c_anything", 405)


# -- the checks ---------------------------------------------------------------------------------------------

def url_map_routes(app) -> set[tuple[str, str]]:
    return {(rule.rule, method) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_route_in_the_url_map_has_a_scenario_or_a_reason(app, client):
    routes = url_map_routes(app)
    assert set(SCENARIOS) == routes, (f"without a scenario: {sorted(routes - set(SCENARIOS))}; "
                                      f"scenarios for no route: {sorted(set(SCENARIOS) - routes)}")
    paths = client.get("/openapi.json").json["paths"]
    undocumented = {(rule, method) for rule, method in routes
                    if method.lower() not in paths.get(openapi_path(rule), {})}
    assert undocumented == set(NOT_IN_OPENAPI), "a route is missing from /openapi.json without a reason here"


@pytest.mark.parametrize("route", sorted(SCENARIOS), ids=lambda r: f"{r[1]} {r[0]}")
def test_every_answer_of_the_route_matches_its_documentation(world, route):
    rule, method = route
    SCENARIOS[route](world)
    seen = world.contract.seen[rule]
    operation = world.contract.operation(rule, method)
    assert any(status >= 400 for _, status in seen), f"{method} {rule}: no error answer was exercised"
    if operation is None:
        assert route in NOT_IN_OPENAPI
        return
    answered = {str(status) for m, status in seen if m == method}
    successes = {status for status in operation["responses"] if status.startswith("2")}
    assert successes <= answered, f"{method} {rule}: documented successes never produced: {successes - answered}"
    if any(not status.startswith("2") for status in operation["responses"]):
        assert any(s >= "400" for s in answered), f"{method} {rule}: none of its documented errors was exercised"


def test_the_contract_check_catches_an_undocumented_field_and_a_missing_one(world):
    """The validator itself: what a drifting view would send is refused."""
    contract = world.contract
    good = world.get("/healthz").json
    with pytest.raises(AssertionError, match="Additional properties"):
        contract.validate({**good, "uptime": 5}, {"$ref": REF_PREFIX + "Health"}, "healthz")
    conv = world.customer_says("hello", "15551230020")
    body = world.get(f"/api/v1/conversations/{conv.id}", token=world.bot).json
    del body["contact"]["wa_id"]
    with pytest.raises(AssertionError, match="'wa_id' is a required property"):
        contract.validate(body, {"$ref": REF_PREFIX + "Conversation"}, "conversation")
    body["escalation"] = {"anything": "goes?"}
    with pytest.raises(AssertionError, match="escalation"):
        contract.validate(body, {"$ref": REF_PREFIX + "Conversation"}, "conversation")


def test_a_view_answering_with_an_undeclared_key_is_a_500_not_a_silent_drift(world, monkeypatch):
    """reply() dumps through the documented schema and refuses keys it does not declare."""
    from models import Agent

    _, ana = world.agent("ana")
    original = Agent.to_dict
    monkeypatch.setattr(Agent, "to_dict", lambda self, **kw: {**original(self, **kw), "password": "x"})
    response = world.app.test_client().get("/api/v1/agents/me", headers=bearer(ana))
    assert response.status_code == 500 and response.json["error"] == "internal_error"
    assert "password" not in response.get_data(as_text=True)
