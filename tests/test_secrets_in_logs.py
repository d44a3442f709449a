"""Secrets never reach the logs (issue 11, tests that must exist #4).

A realistic run, with every log at DEBUG: the Cloud API handshake, customers'
text and media, the n8n bot answering its turns, a handoff to an agent created
through the API, the agent's replies, signed media links, /metrics with its
token, wrong and revoked tokens, a deactivation, then WASender in and out.
Every secret of that run (app secret, access token, verify token, WASender key
and webhook secret, event secret, SECRET_KEY, METRICS_TOKEN and every API token
issued) is then searched for in everything logged: none may appear, not even
16 characters of one. The same holds for the logs of Baton's real processes
(gunicorn with its access log, RQ workers, cron) in a shorter run."""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
import secrets
import time
import uuid

import orjson
import pytest
import requests

from jobs.context import set_runtime
from models import ApiToken, Media
from tests.fakes.graph_api import FakeGraphApi
from tests.fakes.n8n import FakeN8n
from tests.fakes.wasender_api import FakeWasenderApi
from tests.support import ASK_FOR_A_HUMAN, PHONE_NUMBER_ID, bearer, conversation_of, settle, text_webhook, wait_until
from tests.upload_files import png

WINDOW = 16          # no 16 characters in a row of any secret may be logged


def _secret(name: str) -> str:
    return f"{name}-{secrets.token_hex(16)}"


def leaks(text: str, named_secrets: dict[str, str]) -> list[str]:
    """The names of the secrets with any WINDOW characters in a row in `text`."""
    found = []
    for name, value in named_secrets.items():
        if any(value[i:i + WINDOW] in text for i in range(max(1, len(value) - WINDOW + 1))):
            found.append(name)
    return found


def test_the_leak_check_finds_a_secret_even_in_part():
    value = _secret("probe")
    assert leaks(f"token={value[3:3 + WINDOW]}…", {"probe": value}) == ["probe"]
    assert leaks("nothing here", {"probe": value}) == []


def _signed_cloud(raw: bytes, app_secret: str) -> dict:
    signature = hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}


def _cloud_image(wa_id: str, media_id: str, content: bytes) -> bytes:
    import base64

    body = {"id": media_id, "mime_type": "image/png", "sha256": base64.b64encode(hashlib.sha256(content).digest())
            .decode()}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Pia"}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": f"wamid.IMG{time.time_ns()}", "timestamp": str(int(time.time())),
                          "type": "image", "image": body}]}}]}]})


def _wasender_text(wa_id: str, text: str) -> bytes:
    key = {"id": f"3EB0{time.time_ns()}", "fromMe": False, "remoteJid": f"{wa_id}@s.whatsapp.net",
           "cleanedSenderPn": wa_id}
    return orjson.dumps({"event": "messages.upsert", "timestamp": int(time.time()), "data": {"messages": [
        {"key": key, "messageBody": text, "message": {"conversation": text}, "pushName": "Rita"}]}})


def test_no_secret_reaches_the_logs_of_a_full_run(app_factory, caplog, runner):
    caplog.set_level(logging.DEBUG)
    s = {name: _secret(name) for name in ("app_secret", "verify_token", "access_token", "wasender_key",
                                          "wasender_webhook_secret", "event_secret", "secret_key",
                                          "metrics_token")}
    with FakeGraphApi(access_token=s["access_token"]) as graph, FakeN8n(s["event_secret"]) as n8n, \
            FakeWasenderApi(api_key=s["wasender_key"]) as wasender_api:
        common = dict(BATON_EVENT_SECRET=s["event_secret"], SECRET_KEY=s["secret_key"],
                      METRICS_TOKEN=s["metrics_token"], N8N_NOTIFY_URL=n8n.url_for("notify"), LOG_LEVEL="DEBUG",
                      SENTIMENT_LANGUAGES="", AUTH_FAILURE_LIMIT=1000)
        cloud = app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_APP_SECRET=s["app_secret"],
                            WHATSAPP_VERIFY_TOKEN=s["verify_token"], WHATSAPP_ACCESS_TOKEN=s["access_token"],
                            WHATSAPP_API_BASE=graph.api_base, N8N_BOT_URL=n8n.url_for("bot"), **common)
        set_runtime(cloud.extensions["baton"])
        client = cloud.test_client()
        admin = ApiToken.issue("root", "admin")[1]
        bot = ApiToken.issue("n8n", "bot")[1]
        s["admin_token"], s["bot_token"] = admin, bot

        # Meta's handshake, right and wrong
        assert client.get(f"/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={s['verify_token']}"
                          "&hub.challenge=42").status_code == 200
        assert client.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"
                          ).status_code == 403
        # a customer writes; the n8n bot answers its turn; a forged webhook is refused
        raw, headers = text_webhook("15553330001", "hello", secret=s["app_secret"])
        assert client.post("/webhooks/whatsapp", data=raw, headers=headers).status_code == 200
        assert client.post("/webhooks/whatsapp", data=raw, headers={
            **headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}).status_code == 401
        settle(cloud)
        [turn] = [e["json"] for e in n8n.received("bot.turn")]
        assert client.post("/api/v1/bot/replies", headers=bearer(bot), json={
            "conversation_id": turn["conversation"]["id"], "turn_id": turn["turn_id"], "text": "Hi! How can I help?"
        }).status_code == 202
        settle(cloud)
        # the customer sends a photo (fetched from the Graph API with the access token)
        photo = png()
        graph.add_media("770001", photo, "image/png")
        raw = _cloud_image("15553330001", "770001", photo)
        assert client.post("/webhooks/whatsapp", data=raw, headers=_signed_cloud(raw, s["app_secret"])
                           ).status_code == 200
        settle(cloud)
        record = Media.get(Media.provider_media_id == "770001")
        assert record.status == "stored", record.error
        # and asks for a person: an admin creates one through the API, who claims and answers
        raw, headers = text_webhook("15553330001", ASK_FOR_A_HUMAN, secret=s["app_secret"])
        client.post("/webhooks/whatsapp", data=raw, headers=headers)
        settle(cloud)
        created = client.post("/api/v1/agents", headers=bearer(admin), json={"name": "Ana"})
        assert created.status_code == 201
        agent = s["agent_token"] = created.json["token"]
        assert client.patch("/api/v1/agents/me", headers=bearer(agent), json={"status": "online"}).status_code == 200
        conv = conversation_of("15553330001")
        assert client.post(f"/api/v1/conversations/{conv.id}/claim", headers=bearer(agent)).status_code == 200
        upload = client.post("/api/v1/media", headers=bearer(agent), content_type="multipart/form-data",
                             data={"file": (io.BytesIO(png(rgb=(1, 2, 3))), "map.png", "image/png")})
        assert upload.status_code == 201, upload.json
        assert client.post(f"/api/v1/conversations/{conv.id}/messages", headers=bearer(agent),
                           json={"caption": "Here is the map", "media_id": upload.json["id"]}).status_code == 202
        settle(cloud)
        # the agent opens the customer's photo through its signed link
        link = client.get(f"/api/v1/media/{record.id}", headers=bearer(agent))
        assert link.status_code == 302
        assert client.get(link.headers["Location"].removeprefix("http://baton.test")).status_code == 200
        # metrics with and without the right token; wrong and revoked API tokens
        assert client.get("/metrics", headers=bearer(s["metrics_token"])).status_code == 200
        assert client.get("/metrics", headers=bearer("wrong")).status_code == 401
        assert client.get("/api/v1/conversations", headers=bearer("bt_" + "x" * 43)).status_code == 401
        spare, s["spare_token"] = ApiToken.issue("spare", "bot")
        assert client.delete(f"/api/v1/tokens/{spare.id}", headers=bearer(admin)).status_code == 200
        assert client.get("/api/v1/conversations", headers=bearer(s["spare_token"])).status_code == 401
        ana_id = client.get("/api/v1/agents/me", headers=bearer(agent)).json["id"]
        assert client.post(f"/api/v1/agents/{ana_id}/deactivate", headers=bearer(admin)).status_code == 200
        assert client.get("/api/v1/agents/me", headers=bearer(agent)).status_code == 401
        settle(cloud)
        cli = runner.invoke(args=["baton", "token", "add", "--role", "bot", "--name", "cli"])
        s["cli_token"] = cli.output.strip().splitlines()[-1]
        assert len(graph.accepted) >= 3 and n8n.received("handoff.offered")

        # WASender in and out (the built-in bot answers, sent with the API key)
        was = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_API_KEY=s["wasender_key"],
                          WASENDER_WEBHOOK_SECRET=s["wasender_webhook_secret"], WASENDER_API_BASE=wasender_api.url,
                          WHATSAPP_APP_SECRET=s["app_secret"], **common)
        set_runtime(was.extensions["baton"])
        answer = was.test_client().post("/webhooks/wasender", data=_wasender_text("5551234567", "hi"), headers={
            "Content-Type": "application/json", "X-Webhook-Signature": s["wasender_webhook_secret"]})
        assert answer.status_code == 200 and answer.json["messages"] == 1
        assert was.test_client().post("/webhooks/wasender", data=_wasender_text("5551234567", "hi"), headers={
            "Content-Type": "application/json", "X-Webhook-Signature": "guess"}).status_code == 401
        settle(was)
        sends = [r for r in wasender_api.requests if r[1] == "/api/send-message"]
        assert sends and sends[0][2]["Authorization"] == f"Bearer {s['wasender_key']}"   # the key was used

    logged = caplog.text
    assert len(caplog.records) > 50 and "DEBUG" in logged          # the logs were really captured, at DEBUG
    assert not leaks(logged, s), f"secrets in the logs: {leaks(logged, s)}"


@pytest.mark.processes
@pytest.mark.timeout(180)
def test_no_secret_reaches_the_logs_of_the_real_processes(app, settings_overrides, tmp_path):
    from tests.harness import SHORT_LEASES, BatonProcesses

    s = {name: _secret(name) for name in ("app_secret", "verify_token", "event_secret", "secret_key",
                                          "metrics_token")}
    admin = s["admin_token"] = ApiToken.issue("root", "admin")[1]
    with FakeN8n(s["event_secret"]) as n8n:
        settings = {**settings_overrides, **SHORT_LEASES, "WHATSAPP_APP_SECRET": s["app_secret"],
                    "WHATSAPP_VERIFY_TOKEN": s["verify_token"], "BATON_EVENT_SECRET": s["event_secret"],
                    "SECRET_KEY": s["secret_key"], "METRICS_TOKEN": s["metrics_token"],
                    "N8N_NOTIFY_URL": n8n.url_for("notify"), "LOG_LEVEL": "DEBUG", "SENTIMENT_LANGUAGES": ""}
        with BatonProcesses(settings, web_workers=1, rq_workers=1, cron=True, log_dir=tmp_path / "logs",
                            access_log=True) as baton:
            baton.wait_ready()
            url = baton.url
            assert requests.get(f"{url}/webhooks/whatsapp", params={
                "hub.mode": "subscribe", "hub.verify_token": s["verify_token"], "hub.challenge": "9"}).text == "9"
            for text in ("hello", ASK_FOR_A_HUMAN):
                raw, headers = text_webhook("15554440001", text, secret=s["app_secret"],
                                            message_id=f"wamid.{uuid.uuid4().hex}")
                assert requests.post(f"{url}/webhooks/whatsapp", data=raw, headers=headers).status_code == 200
            created = requests.post(f"{url}/api/v1/agents", headers=bearer(admin), json={"name": "Ana"})
            s["agent_token"] = created.json()["token"]
            assert requests.patch(f"{url}/api/v1/agents/me", headers=bearer(s["agent_token"]),
                                  json={"status": "online"}).status_code == 200
            assert requests.get(f"{url}/metrics", headers=bearer(s["metrics_token"])).status_code == 200
            assert requests.get(f"{url}/api/v1/conversations", headers=bearer("bt_wrong")).status_code == 401
            wait_until(lambda: n8n.received("handoff.offered"), timeout=30, what="the offer to reach n8n")
            logged = "\n".join(path.read_text(errors="replace") for path in sorted((tmp_path / "logs").glob("*.log")))
    assert "GET /readyz" in logged and "DEBUG" in logged        # access log and DEBUG lines were written
    assert not leaks(logged, s), f"secrets in the process logs: {leaks(logged, s)}"
