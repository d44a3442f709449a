"""Customers as WhatsApp names them since 2026: by a phone number, a
business-scoped user id (BSUID), or both, with Meta free to start or stop
sending the phone number. Either id finds the one contact (and conversation)
of the person; two contacts that turn out to be one person are merged; system
messages re-link a customer to new ids; replies go to the phone number when
Baton has one, else to the user id (Cloud API `recipient`)."""
from __future__ import annotations

import itertools
import time

import orjson
import pytest

from models import Contact, Conversation, Event, Message
from tests.fixtures.samples import cloud_headers
from tests.support import (ASK_FOR_A_HUMAN, TEST_APP_SECRET, Team, audit_events, bearer, customer_says, settle,
                           settle_until)

PHONE = "15550003301"
BSUID = "US.4417722900311550021"
NEW_BSUID = "US.5528833011422661132"
_ids = itertools.count(1)


def message_from(text: str = "hello", *, phone: str | None = None, user_id: str | None = None,
                 username: str | None = None, name: str | None = "Rosa Lima", system: dict | None = None) -> dict:
    """A Cloud API `messages` change value from a customer known by the ids given."""
    n = next(_ids)
    message = {"id": f"wamid.IDENTITY.{n:04d}", "timestamp": str(int(time.time()) - 600 + n)}
    if phone:
        message["from"] = phone
    if user_id:
        message["from_user_id"] = user_id
    if system:
        message.update(type="system", system=system)
    else:
        message.update(type="text", text={"body": text})
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001000", "phone_number_id": "sandbox-1"},
             "messages": [message]}
    if not system:
        contact = {"profile": {"name": name, **({"username": username} if username else {})}}
        contact.update({k: v for k, v in (("wa_id", phone), ("user_id", user_id)) if v})
        value["contacts"] = [contact]
    return value


def post(app, value: dict) -> dict:
    raw = orjson.dumps({"object": "whatsapp_business_account",
                        "entry": [{"id": "102030405060708", "changes": [{"field": "messages", "value": value}]}]})
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=cloud_headers(raw, TEST_APP_SECRET))
    assert response.status_code == 200, response.json
    return response.json


def people() -> list[tuple]:
    return [(c.wa_id, c.user_id, c.username, c.name) for c in Contact.select().order_by(Contact.created_at)]


def only_conversation() -> Conversation:
    [conv] = Conversation.select()
    return conv


def texts_of(conv: Conversation) -> list[str | None]:
    return [m.text for m in Message.select().where((Message.conversation == conv.id) & (Message.direction == "in"))
            .order_by(Message.sent_at)]


# -- either id finds the person ---------------------------------------------------------------------

def test_a_customer_who_writes_with_a_phone_number_and_then_only_a_user_id_stays_one_conversation(app):
    post(app, message_from("I want to change my order", phone=PHONE, user_id=BSUID, username="@rosa.l"))
    post(app, message_from("it's me again, number hidden", user_id=BSUID, username="@rosa.l"))
    settle(app)

    assert people() == [(PHONE, BSUID, "@rosa.l", "Rosa Lima")]
    conv = only_conversation()
    assert texts_of(conv) == ["I want to change my order", "it's me again, number hidden"]
    assert Message.select().where(Message.routed_to.is_null()).count() == 0


def test_a_customer_first_known_by_user_id_gets_the_phone_number_linked_when_meta_sends_it(app):
    post(app, message_from("hi, username only", user_id=BSUID, username="@rosa.l"))
    assert people() == [(None, BSUID, "@rosa.l", "Rosa Lima")]

    post(app, message_from("now with my number", phone=PHONE, user_id=BSUID))
    post(app, message_from("and by number alone", phone=PHONE))
    settle(app)

    assert people() == [(PHONE, BSUID, "@rosa.l", "Rosa Lima")]
    assert texts_of(only_conversation()) == ["hi, username only", "now with my number", "and by number alone"]


def test_a_cached_customer_is_found_by_the_other_id_in_another_process_too(app, app_factory):
    """Each web process caches customers by the ids a message carries: a second
    process (its own cache) meeting the customer by the other id finds the same row."""
    post(app, message_from("first", phone=PHONE, user_id=BSUID))
    other = app_factory()
    post(other, message_from("second", user_id=BSUID))
    post(app, message_from("third", phone=PHONE))
    assert len(people()) == 1 and Message.select().where(Message.conversation == only_conversation().id).count() == 3


def test_customers_without_phone_numbers_are_told_apart_by_user_id(app):
    for n, user_id in enumerate((BSUID, NEW_BSUID, "BR.1100220033004400551")):
        post(app, message_from(f"hello {n}", user_id=user_id, name=f"Customer {n}"))
    post(app, message_from("hello again", user_id=NEW_BSUID, name="Customer 1"))
    assert [(wa_id, user_id, name) for wa_id, user_id, _, name in people()] == [
        (None, BSUID, "Customer 0"), (None, NEW_BSUID, "Customer 1"), (None, "BR.1100220033004400551", "Customer 2")]
    by_contact = {c.contact.user_id: texts_of(c) for c in Conversation.select()}
    assert by_contact[NEW_BSUID] == ["hello 1", "hello again"] and len(by_contact) == 3


def test_a_username_or_name_change_is_recorded_for_a_known_customer(app):
    post(app, message_from("one", phone=PHONE, user_id=BSUID, username="@rosa.l"))
    post(app, message_from("two", phone=PHONE, user_id=BSUID, username="@rosa.lima", name="Rosa L."))
    assert people() == [(PHONE, BSUID, "@rosa.lima", "Rosa L.")]


# -- two contacts that are one person ------------------------------------------------------------------

def test_two_contacts_of_one_person_are_merged_into_the_conversation_a_human_holds(app):
    """Before Baton stored both ids, Rosa became two contacts: one by phone number (who
    asked for a human and is waiting), one by user id (with the bot). A webhook that
    carries both ids makes them one contact and one conversation: the waiting one."""
    team = Team(app)
    team.add("ana")
    post(app, message_from(ASK_FOR_A_HUMAN, phone=PHONE))
    post(app, message_from("hello bot", user_id=BSUID, username="@rosa.l"))
    settle(app)
    by_phone = Conversation.select().join(Contact).where(Contact.wa_id == PHONE).get()
    by_user_id = Conversation.select().join(Contact).where(Contact.user_id == BSUID).get()
    assert (by_phone.state, by_user_id.state) == ("PENDING_AGENT", "BOT_CONTROLLED")
    Conversation.update(metadata={"order": "A-17"}).where(Conversation.id == by_user_id.id).execute()
    earlier = Message.select().count()

    counts = post(app, message_from("both my ids now", phone=PHONE, user_id=BSUID))
    settle(app)

    assert counts["messages"] == 1
    assert people() == [(PHONE, BSUID, "@rosa.l", "Rosa Lima")]
    conv = only_conversation()
    assert conv.id == by_phone.id and conv.state == "PENDING_AGENT"
    assert conv.metadata["order"] == "A-17" and conv.version > by_phone.version
    assert texts_of(conv) == [ASK_FOR_A_HUMAN, "hello bot", "both my ids now"]
    assert Message.select().where(Message.conversation == conv.id).count() == earlier + 1
    [merged] = [e for e in audit_events(conv.id) if e.reason == "contact_merged"]
    assert merged.details["merged_conversation_id"] == by_user_id.id
    assert merged.details["merged_state"] == "BOT_CONTROLLED" and merged.details["moved_messages"] == 2
    assert (merged.details["wa_id"], merged.details["user_id"]) == (PHONE, BSUID)
    # The bot conversation's audit trail came along.
    assert any(e.reason != "contact_merged" and e.details and e.details.get("message_id") for e in audit_events(conv.id))

    # Still offered to Ana; Rosa's next message, by either id, lands in the one conversation.
    assert conv.offered_agent_id == team.id("ana")
    post(app, message_from("still waiting", user_id=BSUID))
    settle(app)
    assert Conversation.select().count() == 1 and texts_of(conv)[-1] == "still waiting"
    assert team.act("ana", "claim", conv.id).status_code == 200


def test_a_merged_conversation_with_messages_not_yet_routed_routes_them_in_the_survivor(app):
    """The merge happens in the webhook, while the other conversation's inbox may still
    hold a message: the pump skips it there (it moved), and the survivor's drain routes
    it where it is, before the customer's later messages (routing.drain.in_writing_order;
    the sweep would have routed it too, but after them)."""
    from models import BotTurn

    post(app, message_from("by phone", phone=PHONE))               # recorded, not routed yet
    post(app, message_from("by user id", user_id=BSUID))
    post(app, message_from("by both", phone=PHONE, user_id=BSUID))
    settle(app)
    conv = only_conversation()
    assert Message.select().where(Message.conversation != conv.id).count() == 0
    assert Message.get(Message.text == "by phone").routed_to == "bot"
    assert texts_of(conv) == ["by phone", "by user id", "by both"]
    turns = BotTurn.select().where(BotTurn.conversation == conv.id).order_by(BotTurn.created_at, BotTurn.id)
    assert [Message.get_by_id(t.message_id).text for t in turns] == ["by phone", "by user id", "by both"]


# -- system messages re-link the customer --------------------------------------------------------------

def test_user_changed_user_id_relinks_the_contact_to_the_new_user_id(app):
    post(app, message_from("hello", user_id=BSUID, username="@rosa.l"))
    conv = only_conversation()

    post(app, message_from(user_id=BSUID, system={
        "body": "User changed their business-scoped user ID", "type": "user_changed_user_id",
        "user_id": NEW_BSUID, "previous_user_id": BSUID}))
    post(app, message_from("from my new id", user_id=NEW_BSUID))
    settle(app)

    assert people() == [(None, NEW_BSUID, "@rosa.l", "Rosa Lima")]
    assert only_conversation().id == conv.id
    assert texts_of(conv) == ["hello", "User changed their business-scoped user ID", "from my new id"]
    [relinked] = [e for e in audit_events(conv.id) if e.reason == "contact_relinked"]
    assert relinked.details["before"] == {"wa_id": None, "user_id": BSUID}
    assert relinked.details["after"] == {"wa_id": None, "user_id": NEW_BSUID}


def test_a_relink_to_a_user_id_another_contact_holds_merges_the_two(app):
    """Rosa wrote from her new user id before the notice of the change arrived."""
    post(app, message_from("old id", user_id=BSUID))
    post(app, message_from("new id, early", user_id=NEW_BSUID))
    assert len(people()) == 2

    post(app, message_from(user_id=BSUID, system={
        "body": "User changed their business-scoped user ID", "type": "user_changed_user_id", "user_id": NEW_BSUID}))
    settle(app)

    assert people() == [(None, NEW_BSUID, None, "Rosa Lima")]
    conv = only_conversation()
    assert texts_of(conv) == ["old id", "new id, early", "User changed their business-scoped user ID"]
    assert [e.reason for e in audit_events(conv.id) if e.reason.startswith("contact_")] == \
        ["contact_relinked", "contact_merged"]


def test_user_changed_number_moves_the_contact_to_the_new_number(app):
    post(app, message_from("hello", phone=PHONE, user_id=BSUID))
    post(app, message_from(phone=PHONE, user_id=BSUID, system={
        "body": f"User Rosa changed from {PHONE} to 15550003399", "type": "user_changed_number",
        "wa_id": "15550003399", "user_id": NEW_BSUID, "previous_user_id": BSUID}))
    post(app, message_from("from the new number", phone="15550003399"))
    assert people() == [("15550003399", NEW_BSUID, None, "Rosa Lima")]
    assert Conversation.select().count() == 1


# -- where replies go ----------------------------------------------------------------------------------

@pytest.fixture
def cloud_app(app_factory, graph_api):
    return app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                       WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v")


def sent_bodies(graph_api) -> list[dict]:
    return [body for _, path, _, body in graph_api.requests if path.endswith("/messages")]


def replied(app) -> None:
    settle_until(app, lambda: not Message.select().where(Message.status == "queued").exists(),
                 what="the replies to leave")


def test_replies_go_to_the_phone_number_when_baton_has_one(cloud_app, graph_api):
    post(cloud_app, message_from("hi", phone=PHONE, user_id=BSUID))
    replied(cloud_app)
    post(cloud_app, message_from("hi again", user_id=BSUID))      # the number hidden now: still known
    replied(cloud_app)
    bodies = sent_bodies(graph_api)
    assert len(bodies) == 2
    assert all(body["to"] == PHONE and "recipient" not in body for body in bodies)


def test_replies_go_to_the_user_id_when_there_is_no_phone_number(cloud_app, graph_api):
    post(cloud_app, message_from("hi", user_id=BSUID, username="@rosa.l"))
    replied(cloud_app)
    [body] = sent_bodies(graph_api)
    assert body["recipient"] == BSUID and "to" not in body
    assert (body["messaging_product"], body["recipient_type"], body["type"]) == ("whatsapp", "individual", "text")
    reply = Message.get(Message.direction == "out")
    assert reply.status == "sent" and reply.provider_message_id.startswith("wamid.")


def test_an_agent_reply_to_a_username_only_customer_goes_to_the_user_id(cloud_app, graph_api):
    team = Team(cloud_app)
    team.add("ana")
    post(cloud_app, message_from(ASK_FOR_A_HUMAN, user_id=BSUID, username="@rosa.l"))
    replied(cloud_app)
    conv = only_conversation()
    assert team.act("ana", "messages", conv.id, {"text": "Hi Rosa, Ana here"}).status_code in (200, 201, 202)
    replied(cloud_app)
    last = sent_bodies(graph_api)[-1]
    assert (last.get("recipient"), last.get("to"), last["text"]["body"]) == (BSUID, None, "Hi Rosa, Ana here")


# -- what the API and console show ------------------------------------------------------------------------

def test_the_api_shows_both_ids_and_the_username_and_finds_the_customer_by_either(app, admin_token):
    post(app, message_from("hi", user_id=BSUID, username="@rosa.l"))
    client = app.test_client()
    listed = client.get(f"/api/v1/conversations?contact={BSUID}", headers=bearer(admin_token)).json
    [conv] = listed["items"]
    assert conv["contact"] == {"wa_id": None, "user_id": BSUID, "username": "@rosa.l", "name": "Rosa Lima"}

    post(app, message_from("with my number", phone=PHONE, user_id=BSUID))
    [by_phone] = client.get(f"/api/v1/conversations?contact={PHONE}", headers=bearer(admin_token)).json["items"]
    assert by_phone["id"] == conv["id"] and by_phone["contact"]["wa_id"] == PHONE
    detail = client.get(f"/api/v1/conversations/{conv['id']}", headers=bearer(admin_token)).json
    assert detail["contact"]["username"] == "@rosa.l"


def test_customer_says_by_phone_alone_still_works_as_before(app):
    """Phone-only webhooks (the simulator's, older payloads) key on the phone number."""
    customer_says(app, "hi")
    customer_says(app, "again")
    [(wa_id, user_id, _, _)] = people()
    assert user_id is None and Conversation.select().count() == 1 and wa_id


def test_no_event_is_written_for_an_ordinary_message(app):
    post(app, message_from("hi", phone=PHONE, user_id=BSUID))
    post(app, message_from("hi", user_id=BSUID))
    assert not Event.select().where(Event.reason.startswith("contact_")).exists()


# -- WASender: a LID linked to the phone number when an event gives both ------------------------------

WASENDER_SECRET = "wasender-identity-secret"
LID = "80412345670011@lid"


@pytest.fixture
def wasender_app(app_factory, wasender_api):
    return app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                       WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url)


def wasender_says(app, text: str, *, phone: str | None = None, lid: str | None = LID) -> dict:
    key = {"id": f"3EB0IDENTITY{next(_ids):04d}", "fromMe": False,
           "remoteJid": lid if lid else f"{phone}@s.whatsapp.net"}
    if lid:
        key.update(addressingMode="lid", senderLid=lid)
    if phone:
        key.update(senderPn=f"{phone}@s.whatsapp.net", cleanedSenderPn=phone)
    raw = orjson.dumps({"event": "messages.received", "timestamp": int(time.time()), "data": {"messages": {
        "key": key, "pushName": "Lina", "messageTimestamp": int(time.time()), "messageBody": text,
        "message": {"conversation": text}}}})
    response = app.test_client().post("/webhooks/wasender", data=raw, headers={
        "Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET})
    assert response.status_code == 200, response.json
    return response.json


def wasender_sends(wasender_api) -> list[str]:
    return [body["to"] for _, path, _, body in wasender_api.requests if path == "/api/send-message"]


def test_a_wasender_customer_in_a_lid_chat_stays_one_contact_when_the_number_goes_missing(wasender_app, wasender_api):
    wasender_says(wasender_app, "hi", phone=PHONE)
    settle(wasender_app)
    wasender_says(wasender_app, "hi again, LID only")
    settle(wasender_app)
    assert people() == [(PHONE, LID, None, "Lina")]
    assert texts_of(only_conversation()) == ["hi", "hi again, LID only"]
    assert wasender_sends(wasender_api) == [f"+{PHONE}", f"+{PHONE}"]


def test_a_wasender_customer_known_only_by_lid_is_answered_at_the_lid_and_linked_later(wasender_app, wasender_api):
    wasender_says(wasender_app, "hi, LID only")
    settle(wasender_app)
    assert people() == [(None, LID, None, "Lina")]
    assert wasender_sends(wasender_api) == [LID]

    wasender_says(wasender_app, "now with my number", phone=PHONE)
    settle(wasender_app)
    assert people() == [(PHONE, LID, None, "Lina")]
    assert wasender_sends(wasender_api)[-1] == f"+{PHONE}"


def test_a_wasender_status_in_a_lid_chat_finds_the_message_it_is_about(wasender_app, wasender_api):
    """WASender answers a send with its own msgId; the status of a LID chat names the
    customer by LID: it adopts the key id of the oldest message to that customer."""
    wasender_says(wasender_app, "hi", phone=PHONE)
    settle(wasender_app)
    reply = Message.get(Message.direction == "out")
    raw = orjson.dumps({"event": "messages.update", "timestamp": int(time.time()), "data": {
        "key": {"id": "3EB0KEYIDLID0001", "fromMe": True, "remoteJid": LID}, "update": {"status": 3}}})
    response = wasender_app.test_client().post("/webhooks/wasender", data=raw, headers={
        "Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET})
    assert response.json["statuses"] == 1
    reply = Message.get_by_id(reply.id)
    assert (reply.provider_message_id, reply.status) == ("3EB0KEYIDLID0001", "delivered")


def test_a_reply_from_the_business_phone_in_a_lid_chat_lands_in_the_customers_conversation(wasender_app):
    """In our own echo the sender fields describe the business phone: only the chat id
    (the LID) is the customer's, so no contact is made of the business's number."""
    wasender_says(wasender_app, "hi", phone=PHONE)
    settle(wasender_app)
    raw = orjson.dumps({"event": "messages.upsert", "timestamp": int(time.time()), "data": {"messages": {
        "key": {"id": "3EB0ECHOLID0001", "fromMe": True, "remoteJid": LID, "addressingMode": "lid",
                "senderPn": "15550009999@s.whatsapp.net", "cleanedSenderPn": "15550009999"},
        "messageBody": "Hi Lina, Omar from the shop here", "message": {"conversation": "Hi Lina, Omar from the shop here"}}}})
    response = wasender_app.test_client().post("/webhooks/wasender", data=raw, headers={
        "Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET})
    assert response.json["messages"] == 1
    assert people() == [(PHONE, LID, None, "Lina")]
    echo = Message.get(Message.provider_message_id == "3EB0ECHOLID0001")
    assert echo.conversation_id == only_conversation().id and echo.direction == "out"


def test_messages_held_in_a_merged_conversation_are_routed_again_in_the_one_that_stays(app):
    """Rosa's conversation by phone number is held for a typing supervisor when a
    webhook shows she is also the contact (by user id) waiting for a human: the
    typing hold ends with the merged conversation, so its held message goes back
    to routing in the waiting one (to the humans' queue), never left `held`."""
    team = Team(app)
    team.add("sue", role="supervisor")
    post(app, message_from("hello", phone=PHONE))
    settle(app)
    by_phone = Conversation.select().join(Contact).where(Contact.wa_id == PHONE).get()
    assert team.act("sue", "typing", by_phone.id, {"typing": True}).status_code == 204
    post(app, message_from("is anyone typing?", phone=PHONE))
    post(app, message_from(ASK_FOR_A_HUMAN, user_id=BSUID))
    settle(app)
    assert Message.get(Message.text == "is anyone typing?").routed_to == "held"

    post(app, message_from("both my ids now", phone=PHONE, user_id=BSUID))
    settle(app)

    conv = only_conversation()
    assert conv.state == "PENDING_AGENT"
    assert Message.get(Message.text == "is anyone typing?").routed_to == "queued_for_agent"
    assert not Message.select().where(Message.routed_to.in_(["held"]) | Message.routed_to.is_null()).exists()
