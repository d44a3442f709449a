"""Hostile but signed or authenticated input never earns a 5xx (issue 12, part 3), on
SQLite and PostgreSQL alike: NUL bytes and over-long strings, odd types in status
errors, crafted cursors, times past the calendar's ends, a non-ASCII Authorization
header. And the answers say what the HTTP spec wants (a 405 carries `Allow`)."""
from __future__ import annotations

import base64
import json

import orjson
import pytest

from models import Message, UnsupportedUpdate
from tests.fixtures.samples import cloud_headers
from tests.support import TEST_APP_SECRET, bearer, conversation_of, customer_says, text_webhook
from tests.test_status_updates import a_sent_message, statuses_arrive
from tests.test_takeover_and_recovery import post, wasender_app, wasender_message  # noqa: F401  (fixture)


def cursor_of(parts) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts) if not isinstance(parts, bytes) else parts).decode().rstrip("=")


# -- status webhooks whose errors are of the wrong types -------------------------------------------------

@pytest.mark.parametrize("error", [
    {"code": 131026, "title": 404},
    {"code": "not-a-number", "title": "Undeliverable", "error_data": {"details": ["a", "list"]}},
    {"code": [1], "title": {"nested": True}, "message": 7, "error_data": {"details": {"x": 1}}},
    {"code": 10 ** 18, "title": None, "error_data": "flat"},
])
def test_a_failed_status_with_odd_error_fields_is_recorded_not_a_500(app, admin_token, error):
    sent = a_sent_message(app, "wamid.ODD")
    statuses_arrive(app, "wamid.ODD", {"status": "failed", "errors": [error]})
    stored = Message.get_by_id(sent.id)
    assert stored.status == "failed"
    assert stored.error_title is None or isinstance(stored.error_title, str)
    response = app.test_client().get(f"/api/v1/conversations/{sent.conversation_id}/messages",
                                     headers=bearer(admin_token))
    assert response.status_code == 200, response.json


# -- signed webhooks with NUL bytes and strings longer than their columns --------------------------------

def test_a_nul_byte_in_a_text_is_dropped_and_the_message_kept(app):
    assert customer_says(app, "hel\x00lo")["messages"] == 1
    assert Message.get(Message.direction == "in").text == "hello"


def test_an_overlong_sender_is_recorded_as_unsupported_and_the_rest_of_the_batch_is_kept(app):
    raw, _ = text_webhook("1" * 300, "who am I?")
    body = orjson.loads(raw)
    value = body["entry"][0]["changes"][0]["value"]
    good = orjson.loads(text_webhook("5551234567", "hello")[0])["entry"][0]["changes"][0]["value"]
    value["messages"] += good["messages"]
    value["contacts"] += good["contacts"]
    raw = orjson.dumps(body)
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=cloud_headers(raw, TEST_APP_SECRET))
    assert response.status_code == 200, response.json
    assert response.json["messages"] == 1 and response.json["ignored"] == 1
    assert conversation_of("5551234567") is not None
    assert UnsupportedUpdate.get().kind == "oversized:message"


def test_an_overlong_message_id_is_recorded_as_unsupported(app):
    answer = customer_says(app, "hello", message_id="wamid." + "x" * 300)
    assert answer["messages"] == 0 and answer["ignored"] == 1
    assert Message.select().count() == 0


def test_a_wasender_message_with_a_nul_and_an_overlong_id_is_not_a_500(wasender_app):  # noqa: F811
    assert post(wasender_app, wasender_message("a\x00b")).json["messages"] == 1
    assert Message.get(Message.direction == "in").text == "ab"
    response = post(wasender_app, wasender_message("hi", message_id="3EB0" + "9" * 300))
    assert response.status_code == 200 and response.json["ignored"] == 1


def test_an_overlong_status_id_is_ignored(app):
    raw_status = {"status": "delivered"}
    response = statuses_arrive(app, "wamid." + "s" * 300, raw_status)
    assert response["statuses"] == 0 and response["ignored"] == 1


# -- API input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arg", ["assigned", "group", "contact", "state"])
def test_a_nul_in_a_query_argument_is_a_422(client, admin_token, arg):
    response = client.get(f"/api/v1/conversations?{arg}=a%00b", headers=bearer(admin_token))
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_failed" and arg in response.json["details"]


@pytest.mark.parametrize("parts", [[1, 2], [None, None], [{"a": 1}, ["x"]], b'[1180591620717411303424,"x"]', ["x", "c_1"],
                                   ["9999-12-31T23:59:59-14:00", "c_1"], ["2026-01-01T00:00:00Z", "\x00"],
                                   ["2026-01-01T00:00:00Z", "c" * 100], "a string", {"a": 1}])
def test_a_crafted_cursor_is_a_400_bad_cursor(client, admin_token, parts):
    response = client.get("/api/v1/conversations", query_string={"cursor": cursor_of(parts)},
                          headers=bearer(admin_token))
    assert response.status_code == 400, response.json
    assert response.json["error"] == "bad_cursor"


def test_a_crafted_agent_cursor_is_a_400_bad_cursor(client, admin_token):
    response = client.get("/api/v1/agents", query_string={"cursor": cursor_of(b"[1180591620717411303424]")},
                          headers=bearer(admin_token))
    assert response.status_code == 400 and response.json["error"] == "bad_cursor"


def test_a_handed_out_cursor_still_pages(app, client, admin_token):
    for n in range(3):
        customer_says(app, "hello", wa_id=f"555000{n}")
    first = client.get("/api/v1/conversations?limit=2", headers=bearer(admin_token)).json
    rest = client.get("/api/v1/conversations", query_string={"cursor": first["next_cursor"]},
                      headers=bearer(admin_token))
    assert rest.status_code == 200 and len(first["items"]) + len(rest.json["items"]) == 3


@pytest.mark.parametrize("bound, value, seen", [
    ("after", "0001-01-01T00:00:00+14:00", 1), ("before", "9999-12-31T23:59:59-14:00", 1),
    ("after", "9999-12-31T23:59:59-14:00", 0), ("before", "0001-01-01T00:00:00+14:00", 0)])
def test_a_time_past_the_calendars_ends_is_clamped(app, client, admin_token, bound, value, seen):
    customer_says(app, "hello")
    conv = conversation_of()
    response = client.get(f"/api/v1/conversations/{conv.id}/messages", query_string={bound: value},
                          headers=bearer(admin_token))
    assert response.status_code == 200, response.json
    assert len(response.json["items"]) == seen


def test_metrics_with_a_non_ascii_authorization_is_a_401(app_factory):
    client = app_factory(METRICS_TOKEN="s3cret").test_client()
    response = client.get("/metrics", headers={"Authorization": "Bearer caf\u00e9"})
    assert response.status_code == 401 and response.json["error"] == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# -- what the answers say -------------------------------------------------------------------------------

def test_a_405_names_the_allowed_methods(client):
    response = client.delete("/healthz")
    assert response.status_code == 405 and response.json["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET"}
    assert response.content_type.startswith("application/json")


def test_the_openapi_document_states_the_rules_the_server_enforces(client):
    spec = client.get("/openapi.json").json
    paths = spec["paths"]
    cursor = next(p for p in paths["/api/v1/conversations"]["get"]["parameters"] if p["name"] == "cursor")
    assert cursor["schema"] == {"type": "string", "maxLength": 200, "pattern": "^[A-Za-z0-9_-]+$"}
    assert "bad_cursor" in paths["/api/v1/conversations"]["get"]["responses"]["400"]["x-error-codes"]
    transfer = paths["/api/v1/conversations/{conversation_id}/transfer"]["post"]["requestBody"]
    assert transfer["content"]["application/json"]["schema"]["oneOf"] == [{"required": ["agent_id"]},
                                                                           {"required": ["group"]}]
    upload = paths["/api/v1/media"]["post"]["requestBody"]
    assert upload["required"] and upload["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert "provider_not_enabled" in paths["/webhooks/wasender"]["post"]["responses"]["404"]["x-error-codes"]
    assert spec["components"]["schemas"]["AgentMessage"]["properties"]["text"]["maxLength"] == 4096


@pytest.mark.parametrize("body, accepted", [
    ({"text": "hi"}, True), ({"media_id": "md_1", "caption": "look"}, True),
    ({"template": {"name": "hello", "language": "en"}}, True), ({"text": "hi", "caption": "x"}, False),
    ({"text": "hi", "media_id": "md_1"}, False), ({"caption": "x"}, False), ({}, False)])
def test_the_one_of_rule_in_the_document_matches_the_servers(client, body, accepted):
    import jsonschema

    spec = client.get("/openapi.json").json
    rule = spec["paths"]["/api/v1/conversations/{conversation_id}/messages"]["post"]["requestBody"]
    one_of = rule["content"]["application/json"]["schema"]["oneOf"]
    valid = jsonschema.Draft4Validator({"oneOf": one_of}).is_valid(body)
    from blueprints.schemas import AgentMessageSchema
    refused = AgentMessageSchema().validate(body)
    assert valid == accepted == (not refused), refused


@pytest.mark.parametrize("path", ["/api/v1/conversations/c%00x", "/api/v1/conversations/c%00x/messages",
                                  "/api/v1/media/md%00x"])
def test_a_nul_in_a_path_id_is_a_404(client, admin_token, path):
    response = client.get(path, headers=bearer(admin_token))
    assert response.status_code == 404 and response.json["error"] == "not_found"


@pytest.mark.parametrize("body, accepted", [
    ({"text": "hi"}, True), ({"escalate": True}, True), ({"text": "hi", "escalate": True}, True),
    ({"text": None, "escalate": False}, False), ({"escalate": False}, False), ({}, False)])
def test_the_bot_reply_rule_in_the_document_matches_the_servers(client, body, accepted):
    import jsonschema

    spec = client.get("/openapi.json").json
    rule = spec["paths"]["/api/v1/bot/replies"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    valid = jsonschema.Draft4Validator({"anyOf": rule["anyOf"]}).is_valid(body)
    from blueprints.schemas import BotReplySchema
    refused = {k: v for k, v in BotReplySchema().validate({"conversation_id": "c_1", "turn_id": "t_1", **body}).items()}
    assert valid == accepted == (not refused), refused


# -- found by the webhook fuzzer (tests/test_webhook_fuzz.py) ---------------------------------------------

def _signed_post(app, body: dict):
    raw = json.dumps(body).encode()                       # the stdlib writes integers of any size
    return app.test_client().post("/webhooks/whatsapp", data=raw, headers=cloud_headers(raw, TEST_APP_SECRET))


def test_a_profile_name_that_is_not_a_string_is_dropped_not_a_500(app):
    """A dict as the profile name became its long text form: 500 on PostgreSQL
    (longer than the column) and a nonsense name on SQLite."""
    customer_says(app, "hello", wa_id="5551230001")            # a known customer: the cached update path
    for name in ({"first": "x" * 300}, ["a"] * 100, 10 ** 300):
        body = orjson.loads(text_webhook("5551230001", "again", name="placeholder")[0])
        body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = name
        response = _signed_post(app, body)
        assert response.status_code == 200, response.json
    assert conversation_of("5551230001").contact.name == "Test Customer"


def test_a_shared_contact_card_with_a_structured_name_is_kept_as_unsupported(app):
    """A `contacts` message whose formatted_name is not a string broke the
    whole webhook (500); now that message is kept apart and the rest routed."""
    body = orjson.loads(text_webhook("5551230002", "hello")[0])
    value = body["entry"][0]["changes"][0]["value"]
    card = dict(value["messages"][0], id="wamid.CARD", type="contacts",
                contacts=[{"name": {"formatted_name": {"not": "a string"}}}])
    value["messages"].append(card)
    response = _signed_post(app, body)
    assert response.status_code == 200, response.json
    assert response.json["messages"] == 1 and response.json["ignored"] == 1
    assert UnsupportedUpdate.get().kind == "malformed:message"
