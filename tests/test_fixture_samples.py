"""Baton's own webhook fixtures (tests/fixtures/), table-driven.

Every fixture is signed the way its provider signs, goes through the adapter's
verify() and parse(), and through the real webhook endpoint of the test app;
what Baton should make of it is stated in the `.expected.json` beside it.
"""
from __future__ import annotations

import os
from collections import Counter

import orjson
import pytest

from integrations.whatsapp.base import (
    MESSAGE_TYPES,
    InboundMessage,
    StatusUpdate,
    WebhookRejected,
)
from integrations.whatsapp.cloud_api import CloudApiAdapter
from integrations.whatsapp.wasender import WasenderAdapter
from models import Contact, Conversation, Message, UnsupportedUpdate
from tests.fixtures.samples import (
    PROVIDERS,
    Sample,
    cloud_headers,
    expectation_files,
    expectation_path,
    fixture_files,
    sample,
    samples,
    wasender_headers,
)
from tests.support import TEST_APP_SECRET

CLOUD = samples("cloud_api")
WASENDER = samples("wasender")
WASENDER_SECRET = "wasender-fixture-secret"

cloud = CloudApiAdapter(app_secret=TEST_APP_SECRET)
wasender = WasenderAdapter(webhook_secret=WASENDER_SECRET)

# The WASender events its documentation lists (wasenderapi.com/api-docs/webhooks).
WASENDER_EVENTS = {
    "messages.received", "messages.upsert", "messages-personal.received", "messages-group.received",
    "messages-newsletter.received", "messages.update", "messages.delete", "messages.reaction",
    "message-receipt.update", "message.sent", "session.status", "qrcode.updated", "call", "poll.results",
    "chats.upsert", "chats.update", "chats.delete", "contacts.upsert", "contacts.update", "groups.upsert",
    "groups.update", "group-participants.update",
}


# ---- the fixture set itself ----------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_fixture_has_an_expectation_and_every_expectation_a_fixture(provider):
    bodies = {expectation_path(p) for p in fixture_files(provider)}
    assert bodies == set(expectation_files(provider))
    for item in samples(provider):
        orjson.loads(item.raw)                       # each body is JSON
        assert item.expected["covers"] and set(item.expected["parse"]) == {"messages", "statuses", "ignored"}


def test_every_cloud_api_message_type_and_status_has_a_fixture():
    kinds = {m["type"] for s in CLOUD for m in s.expected["parse"]["messages"]}
    statuses = {st["status"] for s in CLOUD for st in s.expected["parse"]["statuses"]}
    assert kinds == set(MESSAGE_TYPES)
    assert statuses == {"sent", "delivered", "read", "played", "failed"}
    assert any(m["from_me"] for s in CLOUD for m in s.expected["parse"]["messages"] if "from_me" in m)


def test_every_documented_wasender_event_has_a_fixture():
    events = {orjson.loads(s.raw).get("event") for s in WASENDER}
    assert events - {None} == WASENDER_EVENTS


_PHONE_KEYS = {"wa_id", "from", "to", "recipient_id", "display_phone_number", "cleanedSenderPn",
               "cleanedParticipantPn", "senderPn", "participantPn", "remoteJid", "userJid", "jid", "owner"}


def _phone_numbers(node, key=None):
    """Values that name a phone: bare digits or a ...@s.whatsapp.net JID (not LIDs, groups, channels)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _phone_numbers(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _phone_numbers(v, key)
    elif key in _PHONE_KEYS and isinstance(node, str) and ("@" not in node or node.endswith("@s.whatsapp.net")):
        user = node.split("@", 1)[0].lstrip("+")
        if user.isdigit():
            yield user


@pytest.mark.parametrize("item", CLOUD + WASENDER, ids=str)
def test_fixtures_use_only_fictional_1555_phone_numbers(item):
    phones = list(_phone_numbers(orjson.loads(item.raw)))
    assert all(n.startswith("1555") and len(n) == 11 for n in phones), phones


# ---- verify() and parse() ----------------------------------------------------------

def _message_view(message: InboundMessage, wanted: dict) -> dict:
    view = {}
    for key, value in wanted.items():
        if key == "sent_at":
            view[key] = int(message.sent_at.timestamp())
        elif key == "media":
            view[key] = {k: (message.media or {}).get(k) for k in value}
        elif key == "raw_keys":
            view[key] = [k for k in value if k in message.raw]
        else:
            view[key] = getattr(message, key)
    return view


def _status_view(status: StatusUpdate, wanted: dict) -> dict:
    return {key: int(status.timestamp.timestamp()) if key == "timestamp" else getattr(status, key)
            for key in wanted}


def assert_parsed_as_expected(parsed, expected: dict) -> None:
    assert len(parsed.messages) == len(expected["messages"])
    assert [_message_view(m, w) for m, w in zip(parsed.messages, expected["messages"])] == expected["messages"]
    assert len(parsed.statuses) == len(expected["statuses"])
    assert [_status_view(s, w) for s, w in zip(parsed.statuses, expected["statuses"])] == expected["statuses"]
    assert [i.kind for i in parsed.ignored] == expected["ignored"]


@pytest.mark.parametrize("item", CLOUD, ids=str)
def test_cloud_fixture_is_verified_and_parsed_as_expected(item: Sample):
    cloud.verify(cloud_headers(item.raw, TEST_APP_SECRET), item.raw)
    with pytest.raises(WebhookRejected):
        cloud.verify(cloud_headers(item.raw, "someone-elses-secret"), item.raw)
    assert_parsed_as_expected(cloud.parse(item.raw), item.expected["parse"])


@pytest.mark.parametrize("item", WASENDER, ids=str)
def test_wasender_fixture_is_verified_and_parsed_as_expected(item: Sample):
    wasender.verify(wasender_headers(WASENDER_SECRET), item.raw)
    with pytest.raises(WebhookRejected):
        wasender.verify(wasender_headers("someone-elses-secret"), item.raw)
    assert_parsed_as_expected(wasender.parse(item.raw), item.expected["parse"])


# ---- the real endpoint -----------------------------------------------------------------

def _apply_known_issue(request, item: Sample) -> None:
    issue = item.expected.get("known_issue")
    if issue and issue["database"] == os.environ.get("BATON_TEST_DATABASE", "sqlite"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=issue["reason"]))


def _post(client, path: str, raw: bytes, headers: dict):
    response = client.post(path, data=raw, headers=headers)
    assert response.status_code == 200, response.json
    return response.json


def _contacts() -> Counter:
    return Counter((c.wa_id, c.user_id, c.username, c.name) for c in Contact.select())


def _contact_key(wanted: dict) -> tuple:
    """An expected contact: keys it does not state are null."""
    return tuple(wanted.get(key) for key in ("wa_id", "user_id", "username", "name"))


def post_and_check(client, path: str, item: Sample, headers: dict) -> None:
    """POST the fixture twice (a provider retry) and check what was recorded."""
    endpoint, parse = item.expected["endpoint"], item.expected["parse"]
    contacts, messages = _contacts(), Message.select().count()
    unsupported = UnsupportedUpdate.select().count()

    counts = _post(client, path, item.raw, headers)
    assert counts == {k: endpoint[k] for k in ("messages", "statuses", "duplicates", "ignored")}
    # Everything acknowledged is stored: every message (unsupported ones too) and every ignored update.
    assert Message.select().count() - messages == len(parse["messages"])
    assert UnsupportedUpdate.select().count() - unsupported == len(parse["ignored"])
    for wanted in parse["messages"]:
        row = Message.get(Message.provider_message_id == wanted["provider_message_id"])
        contact = row.conversation.contact
        assert (row.type, row.direction, contact.wa_id) == \
            (wanted["type"], "out" if wanted.get("from_me") else "in", wanted.get("new_wa_id") or wanted["wa_id"])
        if "user_id" in wanted:
            assert contact.user_id == (wanted.get("new_user_id") or wanted["user_id"])
        if "text" in wanted:
            assert row.text == wanted["text"]
    assert _contacts() - contacts == Counter(_contact_key(c) for c in endpoint["contacts"])
    for wamid, outcome in endpoint.get("outbound", {}).items():
        row = Message.get(Message.provider_message_id == wamid)
        assert row.status == outcome["status"]
        if "error_code" in outcome:
            assert row.error_code == outcome["error_code"]
        if "error_details" in outcome:
            assert row.to_dict()["error"]["details"] == outcome["error_details"]

    again = _post(client, path, item.raw, headers)
    assert again == {"messages": 0, "statuses": len(parse["statuses"]), "duplicates": len(parse["messages"]),
                     "ignored": len(parse["ignored"])}
    assert Message.select().count() - messages == len(parse["messages"])


def _seed_cloud_outbound(client, item: Sample) -> None:
    """Our own earlier message for each status to land on, recorded as a business-app echo."""
    for wamid, outcome in item.expected["endpoint"].get("outbound", {}).items():
        phone_number_id = next(s["phone_number_id"] for s in item.expected["parse"]["statuses"]
                               if s["provider_message_id"] == wamid)
        echo = {"from": "15550001000", "id": wamid, "timestamp": "1767261000", "type": "text",
                "text": {"body": f"earlier reply {wamid}"}}
        echo.update({"to": outcome["recipient"]} if "recipient" in outcome
                    else {"to_user_id": outcome["recipient_user_id"]})
        raw = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102030405060708", "changes": [{
            "field": "smb_message_echoes", "value": {"messaging_product": "whatsapp",
                                                     "metadata": {"phone_number_id": phone_number_id},
                                                     "message_echoes": [echo]}}]}]})
        assert _post(client, "/webhooks/whatsapp", raw, cloud_headers(raw, TEST_APP_SECRET))["messages"] == 1


@pytest.mark.parametrize("item", CLOUD, ids=str)
def test_cloud_fixture_through_post_webhooks_whatsapp(client, item: Sample, request):
    _apply_known_issue(request, item)
    _seed_cloud_outbound(client, item)
    post_and_check(client, "/webhooks/whatsapp", item, cloud_headers(item.raw, TEST_APP_SECRET))


@pytest.fixture
def wasender_client(app_factory):
    return app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                       WASENDER_API_KEY="wasender-fixture-key").test_client()


def _seed_wasender_outbound(client, item: Sample) -> None:
    for key_id, outcome in item.expected["endpoint"].get("outbound", {}).items():
        raw = orjson.dumps({"event": "messages.upsert", "timestamp": 1767347000, "data": {"messages": {
            "key": {"id": key_id, "fromMe": True, "remoteJid": f"{outcome['recipient']}@s.whatsapp.net"},
            "messageBody": f"earlier reply {key_id}", "message": {"conversation": f"earlier reply {key_id}"}}}})
        assert _post(client, "/webhooks/wasender", raw, wasender_headers(WASENDER_SECRET))["messages"] == 1


@pytest.mark.parametrize("item", WASENDER, ids=str)
def test_wasender_fixture_through_post_webhooks_wasender(wasender_client, item: Sample):
    _seed_wasender_outbound(wasender_client, item)
    post_and_check(wasender_client, "/webhooks/wasender", item, wasender_headers(WASENDER_SECRET))


# ---- customers known by a business-scoped user id (2026) ----------------------------------

def test_a_customer_who_hides_the_phone_number_stays_one_contact_and_one_conversation(client):
    """With a phone number the customer's contact keeps both ids; once only user_id is
    left, that user id finds the same contact. (More stories: tests/test_identity.py.)"""
    with_phone = sample("cloud_api", "bsuid_and_wa_id_with_username")
    without = sample("cloud_api", "bsuid_only_returning_customer")
    for item in (with_phone, without):
        assert _post(client, "/webhooks/whatsapp", item.raw, cloud_headers(item.raw, TEST_APP_SECRET))["messages"] == 1
    assert [(c.wa_id, c.user_id, c.username, c.name) for c in Contact.select()] == [
        ("15550001105", "BR.4402918836610057713", "@kai.n", "Kai Nakamura")]
    assert Conversation.select().count() == 1 and Message.select().count() == 2
    assert {m.conversation_id for m in Message.select()} == {Conversation.get().id}
