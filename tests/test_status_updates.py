"""Delivery statuses of outbound messages: they only move forward whatever
order the webhooks arrive in, a failure keeps the provider's code, title and
details, and each change reaches the consoles that may see the conversation
as a live `message.updated` event, best effort. WASender statuses find the
message Baton sent although its send API answered with another id.

Messages are written straight into the database as the outbound lane leaves
them (sent, with the provider's id): these stories are about what the status
webhooks do to them.
"""
from __future__ import annotations

import itertools
import random
from datetime import datetime, timezone

import orjson
import pytest
from redis import Redis

from integrations.whatsapp.base import ParsedWebhook, StatusUpdate
from models import AGENT_CONTROLLED, Conversation, Message, utcnow
from models.message import ERROR_DETAILS_LIMIT, STATUS_RANK
from routing.ingest import IngestCache, announce_updates, record_webhook
from routing.live import channel
from tests.fixtures.samples import cloud_headers
from tests.support import (
    CUSTOMER,
    PHONE_NUMBER_ID,
    TEST_APP_SECRET,
    Team,
    bearer,
    conversation_of,
    customer_says,
    free_port,
    settle,
)
from tests.test_console import browser, tabs  # noqa: F401  (fixtures)
from tests.test_events_stream import agent_token, broadcast, consoles, conversation_waiting_in  # noqa: F401  (fixtures)
from tests.test_takeover_and_recovery import post, wasender_app, wasender_message  # noqa: F401  (fixture)

UNDELIVERABLE = {"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
                 "error_data": {"details": "The recipient's phone number is not a WhatsApp account, or they "
                                           "have not accepted the latest terms."}}


# -- the scene ------------------------------------------------------------------------------------

def a_sent_message(app, provider_message_id: str, *, wa_id: str = CUSTOMER) -> Message:
    """An agent's reply to `wa_id`, accepted by the provider as `provider_message_id`."""
    customer_says(app, "where is my refund?", wa_id)
    conv = conversation_of(wa_id)
    now = utcnow()
    return Message.create(conversation=conv.id, channel=conv.channel_id, direction="out", sender="agent",
                          type="text", text="It is on its way", provider_message_id=provider_message_id,
                          sent_at=now, received_at=now, routed_to="none", status="sent", attempts=0)


def status_webhook(provider_message_id: str, *statuses: str | dict, wa_id: str = CUSTOMER) -> tuple[bytes, dict]:
    """A Cloud API status webhook, signed like Meta's: one entry per status (a
    name, or a dict of extra fields such as `errors`)."""
    items = []
    for status in statuses:
        extra = status if isinstance(status, dict) else {"status": status}
        items.append({"id": provider_message_id, "timestamp": "1800000000", "recipient_id": wa_id, **extra})
    body = {"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
                                       "metadata": {"phone_number_id": PHONE_NUMBER_ID},
                                       "statuses": items}}]}]}
    raw = orjson.dumps(body)
    return raw, cloud_headers(raw, TEST_APP_SECRET)


def statuses_arrive(app, provider_message_id: str, *statuses: str | dict) -> dict:
    raw, headers = status_webhook(provider_message_id, *statuses)
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200, response.json
    return response.json


def recorded(app, provider_message_id: str, status: str, error: dict | None = None) -> None:
    """What the provider adapter hands to routing: record it as the webhook does."""
    rt = app.extensions["baton"]
    update = StatusUpdate(provider_message_id=provider_message_id, phone_number_id=PHONE_NUMBER_ID,
                          recipient_wa_id=CUSTOMER, status=status,
                          timestamp=datetime(2027, 1, 1, tzinfo=timezone.utc), error=error)
    result = record_webhook(rt.adapter.name, ParsedWebhook(statuses=[update]),
                            rt.caches.setdefault("ingest", IngestCache()))
    announce_updates(rt.redis, rt.settings.REDIS_PREFIX, result.updated)


def handled_by(conv_id: str, agent_id: str, group: str = "support") -> None:
    Conversation.update(state=AGENT_CONTROLLED, group=group, assigned_agent_id=agent_id) \
        .where(Conversation.id == conv_id).execute()


class Listener:
    """A raw subscriber of the live channel: what routing published, audience included."""

    def __init__(self, rt):
        self.pubsub = rt.redis.pubsub()
        self.pubsub.subscribe(channel(rt.settings.REDIS_PREFIX))
        assert self.pubsub.get_message(timeout=2)["type"] == "subscribe"

    def next(self, timeout: float = 2.0) -> dict | None:
        message = self.pubsub.get_message(timeout=timeout)
        return orjson.loads(message["data"]) if message else None

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def listener(rt):
    heard = Listener(rt)
    yield heard
    heard.close()


# -- statuses only move forward -------------------------------------------------------------------

ORDERS = [
    (("delivered", "sent"), "delivered"),
    (("read", "delivered", "sent"), "read"),
    (("sent", "read", "delivered"), "read"),
    (("played", "read", "delivered", "sent"), "played"),
    (("read", "played", "delivered"), "played"),
    (("failed", "sent", "delivered", "read"), "failed"),
    (("delivered", "failed", "read", "played"), "failed"),
    (("sent", "delivered", "read", "played", "failed"), "failed"),
]


def test_the_rank_of_statuses_puts_played_above_read_and_failed_above_all():
    assert sorted(STATUS_RANK, key=STATUS_RANK.get) == ["queued", "sent", "delivered", "read", "played", "failed"]


@pytest.mark.parametrize(("order", "final"), ORDERS, ids=["-".join(order) for order, _ in ORDERS])
def test_statuses_arriving_in_any_order_leave_the_highest_one(app, order, final):
    message = a_sent_message(app, "wamid.table")

    for status in order:
        recorded(app, "wamid.table", status)

    assert Message.get_by_id(message.id).status == final


def test_every_shuffle_of_every_status_ends_on_played_or_on_failed(app):
    ladder = ("sent", "delivered", "read", "played")
    orders = [list(order) for order in itertools.permutations(ladder)]
    orders += [random.Random(seed).sample(ladder + ("failed",), 5) for seed in range(12)]
    messages = {i: a_sent_message(app, f"wamid.shuffle{i}") for i in range(len(orders))}

    for i, order in enumerate(orders):
        for status in order:
            recorded(app, f"wamid.shuffle{i}", status)

    finals = {i: Message.get_by_id(message.id).status for i, message in messages.items()}
    assert finals == {i: ("failed" if "failed" in order else "played") for i, order in enumerate(orders)}


@pytest.mark.parametrize("order", list(itertools.permutations(("sent", "delivered", "read"))),
                         ids="-".join)
def test_cloud_api_webhooks_in_any_order_leave_read(app, order):
    message = a_sent_message(app, "wamid.cloud")

    for status in order:
        statuses_arrive(app, "wamid.cloud", status)

    assert Message.get_by_id(message.id).status == "read"


def test_a_late_sent_after_a_failure_does_not_hide_it(app):
    message = a_sent_message(app, "wamid.latefail")

    statuses_arrive(app, "wamid.latefail", {"status": "failed", "errors": [UNDELIVERABLE]})
    statuses_arrive(app, "wamid.latefail", "delivered", "read")

    row = Message.get_by_id(message.id)
    assert (row.status, row.error_code, row.error_title) == ("failed", 131026, "Message undeliverable")


# -- a failure keeps why --------------------------------------------------------------------------

def test_a_failure_keeps_the_providers_code_title_and_details_in_the_api(app, admin_token):
    message = a_sent_message(app, "wamid.failed")

    recorded(app, "wamid.failed", "failed", {"code": 131026, "title": "Message undeliverable",
                                             "details": UNDELIVERABLE["error_data"]["details"]})

    page = app.test_client().get(f"/api/v1/conversations/{message.conversation_id}/messages",
                                 headers=bearer(admin_token)).json
    shown = next(item for item in page["items"] if item["id"] == message.id)
    assert shown["status"] == "failed"
    assert shown["error"] == {"code": 131026, "title": "Message undeliverable",
                              "details": UNDELIVERABLE["error_data"]["details"]}


def test_a_long_explanation_is_kept_bounded(app):
    message = a_sent_message(app, "wamid.verbose")

    recorded(app, "wamid.verbose", "failed", {"code": 131000, "title": "Something went wrong",
                                              "details": "x" * (ERROR_DETAILS_LIMIT * 3)})

    details = Message.get_by_id(message.id).error_details
    assert len(details) == ERROR_DETAILS_LIMIT and details.endswith("…")


def test_a_message_that_never_failed_has_no_error(app, admin_token):
    message = a_sent_message(app, "wamid.fine")

    statuses_arrive(app, "wamid.fine", "delivered")

    page = app.test_client().get(f"/api/v1/conversations/{message.conversation_id}/messages",
                                 headers=bearer(admin_token)).json
    assert next(item for item in page["items"] if item["id"] == message.id)["error"] is None


# -- changes are published ------------------------------------------------------------------------

def test_a_status_change_is_published_once_per_message_with_the_conversations_audience(app, listener):
    message = a_sent_message(app, "wamid.live")
    handled_by(message.conversation_id, "a_alice")

    statuses_arrive(app, "wamid.live", "sent", "delivered", "read")   # one webhook: one event, the last state

    event = listener.next()
    assert event["type"] == "message.updated"
    assert event["conversation_id"] == message.conversation_id
    assert event["data"]["id"] == message.id and event["data"]["status"] == "read"
    assert event["audience"] == {"agents": ["a_alice"], "groups": []}
    assert listener.next(timeout=0.3) is None


def test_a_status_that_changes_nothing_publishes_nothing(app, listener):
    a_sent_message(app, "wamid.stale")
    statuses_arrive(app, "wamid.stale", "read")
    assert listener.next()["data"]["status"] == "read"

    statuses_arrive(app, "wamid.stale", "delivered")

    assert listener.next(timeout=0.3) is None


def test_a_status_for_an_unknown_message_answers_200_and_publishes_nothing(app, listener):
    a_sent_message(app, "wamid.known")

    assert statuses_arrive(app, "wamid.nobody-sent-this", "delivered")["statuses"] == 1
    statuses_arrive(app, "wamid.known", "delivered")

    # The channel keeps order: an event about the unknown message would come first.
    assert listener.next()["data"]["provider_message_id"] == "wamid.known"
    assert Message.select().where(Message.provider_message_id == "wamid.nobody-sent-this").count() == 0


def test_a_redis_outage_while_publishing_still_records_the_status(app, rt, monkeypatch):
    message = a_sent_message(app, "wamid.outage")
    monkeypatch.setattr(rt, "redis", Redis(port=free_port(), socket_connect_timeout=0.2))

    assert statuses_arrive(app, "wamid.outage", "delivered")["statuses"] == 1

    assert Message.get_by_id(message.id).status == "delivered"


def test_text_messages_publish_no_status_event(app, listener):
    customer_says(app, "hello there")

    event = listener.next(timeout=0.3)
    assert event is None or event["type"] != "message.updated"


# -- what reaches whose console -------------------------------------------------------------------

def test_the_handling_agent_hears_the_tick_and_an_agent_of_another_group_does_not(
        app, live_server, consoles, agent_token, rt):  # noqa: F811
    alice, alice_token = agent_token(groups=("support",), name="Alice")
    _, bob_token = agent_token(groups=("billing",), name="Bob")
    message = a_sent_message(app, "wamid.tick")
    handled_by(message.conversation_id, alice.id)
    alice_console, bob_console = consoles(live_server, alice_token), consoles(live_server, bob_token)
    alice_console.wait_connected()
    bob_console.wait_connected()

    statuses_arrive(app, "wamid.tick", "delivered")
    broadcast(rt, conversation_waiting_in("billing", "c_waits_in_billing"))

    alice_hears = alice_console.next_event(timeout=2.0)
    assert alice_hears["event"] == "message.updated"
    assert alice_hears["json"]["data"]["id"] == message.id
    assert alice_hears["json"]["data"]["status"] == "delivered"
    assert "audience" not in alice_console.raw
    bob_hears = bob_console.next_event(timeout=2.0)
    assert bob_hears["json"]["conversation_id"] == "c_waits_in_billing"
    assert "message.updated" not in bob_console.raw


# -- the console --------------------------------------------------------------------------------

@pytest.mark.browser
def test_the_console_moves_the_tick_live_without_a_reload_and_shows_why_a_send_failed(
        app, live_server, tabs):  # noqa: F811
    team = Team(app)
    team.add("bo")
    first = a_sent_message(app, "wamid.first", wa_id="15557770009")
    second = a_sent_message(app, "wamid.second", wa_id="15557770009")
    handled_by(first.conversation_id, team.id("bo"))
    tab = tabs(live_server)
    page, expect = tab.page, tab.expect
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{first.conversation_id}")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    tick = page.locator(f'#history li[data-id="{first.id}"] .msg-status')
    expect(tick).to_have_attribute("data-status", "sent")
    page.evaluate("window.notReloaded = true")

    # Faster than any poll (every 10 s, and only while the stream is down).
    statuses_arrive(app, "wamid.first", "delivered")
    expect(tick).to_have_attribute("data-status", "delivered", timeout=3_000)
    statuses_arrive(app, "wamid.first", "read")
    expect(tick).to_have_attribute("data-status", "read", timeout=3_000)
    statuses_arrive(app, "wamid.first", "delivered")                   # late: changes nothing
    recorded(app, "wamid.second", "failed", {"code": 131026, "title": "Message undeliverable",
                                             "details": UNDELIVERABLE["error_data"]["details"]})
    failed = page.locator(f'#history li[data-id="{second.id}"]')
    expect(failed.locator(".msg-status")).to_have_text("failed: Message undeliverable", timeout=3_000)
    expect(failed.locator(".msg-error-details")).to_have_text(UNDELIVERABLE["error_data"]["details"])
    expect(tick).to_have_attribute("data-status", "read")
    assert page.evaluate("window.notReloaded") is True
    assert tab.errors == []


# -- WASender: its send answer's msgId is not the id its webhooks carry -----------------------

RITA = "5551234567"


def wasender_event(event: str, data: dict) -> bytes:
    return orjson.dumps({"event": event, "timestamp": 1767349320000, "data": data})


def own_key(key_id: str, wa_id: str = RITA) -> dict:
    return {"id": key_id, "fromMe": True, "remoteJid": f"{wa_id}@s.whatsapp.net"}


def wasender_reply(wasender_app) -> Message:  # noqa: F811
    """Rita writes, the bot answers through the WASender API: the reply holds WASender's msgId."""
    assert post(wasender_app, wasender_message("hello", wa_id=RITA)).json["messages"] == 1
    settle(wasender_app)
    reply = Message.get(Message.direction == "out")
    assert reply.status == "sent" and reply.provider_message_id.isdigit()
    return reply


def test_a_wasender_reply_takes_the_key_id_of_its_first_status_and_then_follows_its_ticks(wasender_app):  # noqa: F811
    reply = wasender_reply(wasender_app)

    sent = post(wasender_app, wasender_event("message.sent", {
        "key": own_key("3EB0STATUSFIRST", wa_id=f"+{RITA}"), "message": {"conversation": reply.text},
        "success": True}))
    assert sent.status_code == 200
    assert Message.get_by_id(reply.id).provider_message_id == "3EB0STATUSFIRST"
    post(wasender_app, wasender_event("messages.update", {"update": {"status": 3},
                                                          "key": own_key("3EB0STATUSFIRST")}))
    assert Message.get_by_id(reply.id).status == "delivered"
    post(wasender_app, wasender_event("message-receipt.update", {"message": {
        "key": own_key("3EB0STATUSFIRST"), "receipt": {"readTimestamp": 1767349680}}}))
    post(wasender_app, wasender_event("messages.update", {"update": {"status": 3},
                                                          "key": own_key("3EB0STATUSFIRST")}))

    row = Message.get_by_id(reply.id)
    assert (row.provider_message_id, row.status) == ("3EB0STATUSFIRST", "read")
    assert Message.select().count() == 2


def test_a_wasender_reply_takes_the_key_id_of_its_echo(wasender_app):  # noqa: F811
    reply = wasender_reply(wasender_app)

    echoed = post(wasender_app, wasender_message(reply.text, from_me=True, message_id="3EB0ECHOFIRST",
                                                 wa_id=RITA))
    assert echoed.json["duplicates"] == 1
    post(wasender_app, wasender_event("messages.update", {"update": {"status": 4}, "key": own_key("3EB0ECHOFIRST")}))

    row = Message.get_by_id(reply.id)
    assert (row.provider_message_id, row.status) == ("3EB0ECHOFIRST", "read")


def test_two_wasender_replies_take_their_key_ids_in_the_order_they_were_sent(wasender_app):  # noqa: F811
    first = wasender_reply(wasender_app)
    now = utcnow()
    second = Message.create(conversation=first.conversation_id, channel=first.channel_id, direction="out",
                            sender="agent", type="text", text="Anything else?", provider_message_id="100777",
                            sent_at=now, received_at=now, routed_to="none", status="sent", attempts=0)

    for key_id in ("3EB0ONE", "3EB0TWO"):
        post(wasender_app, wasender_event("messages.update", {"update": {"status": 2}, "key": own_key(key_id)}))

    assert Message.get_by_id(first.id).provider_message_id == "3EB0ONE"
    assert Message.get_by_id(second.id).provider_message_id == "3EB0TWO"


def test_a_wasender_status_about_another_customer_takes_no_reply(wasender_app):  # noqa: F811
    reply = wasender_reply(wasender_app)

    answer = post(wasender_app, wasender_event("messages.update", {"update": {"status": 3},
                                                                   "key": own_key("3EB0ELSE", wa_id="5559990000")}))

    assert answer.status_code == 200
    row = Message.get_by_id(reply.id)
    assert (row.provider_message_id, row.status) == (reply.provider_message_id, "sent")


@pytest.mark.parametrize("status", [
    {"id": "wamid.X", "status": "deleted", "timestamp": "1767349320", "recipient_id": CUSTOMER},   # unknown kind
    {"id": "wamid.X", "status": 7, "timestamp": "soon"},                                           # wrong types
    {"status": "read"},                                                                             # no id
    ["not", "an", "object"],
    "sent",
    {"id": {"nested": True}, "status": "read", "errors": "nope", "biz_opaque_callback_data": {"x": 1}},
])
def test_an_unknown_or_garbled_status_is_kept_as_unsupported_and_answered_200(desk, status):
    from models import UnsupportedUpdate

    raw = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
                                       "metadata": {"phone_number_id": PHONE_NUMBER_ID}, "statuses": [status]}}]}]})
    response = desk.test_client().post("/webhooks/whatsapp", data=raw, headers=cloud_headers(raw, TEST_APP_SECRET))
    assert response.status_code == 200, response.json
    assert (response.json["statuses"], response.json["ignored"]) == (0, 1)
    assert UnsupportedUpdate.select().count() == 1
    assert Message.select().count() == 0
