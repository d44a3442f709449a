"""Echoes are recognised by provider ids, not by text.

A `fromMe` message is Baton's own send coming back only when ids say so: its
id is one Baton knows, or (WASender, whose send answer and webhooks carry
different ids) one of the conversation's sends still waits for its WhatsApp
key id. A person replying from the business phone with words Baton sent a
minute ago is a person replying: stored, and the bot steps aside. Before,
any `fromMe` text equal to a Baton message of the last 10 minutes was
dropped as an echo."""
from __future__ import annotations

from models import Conversation, Message
from tests.support import conversation_of, customer_says, settle
from tests.test_customer_service_window import cloud_api_echo
from tests.test_takeover_and_recovery import post, wasender_app, wasender_message  # noqa: F401  (fixture)

WA_ID = "5551234567"


def bot_reply() -> Message:
    return Message.select().where((Message.direction == "out") & (Message.sender != "agent")) \
        .order_by(Message.seq).first()


def test_wasender_echo_of_a_baton_send_is_matched_once_by_the_id_it_waits_for(wasender_app):  # noqa: F811
    assert post(wasender_app, wasender_message("hello")).json["messages"] == 1
    settle(wasender_app)
    reply = bot_reply()
    assert reply.provider_message_id.isdigit()                 # WASender's msgId: its key id is awaited
    echoed = post(wasender_app, wasender_message(reply.text, from_me=True, message_id="3EB0ECHO0001")).json
    assert (echoed["duplicates"], echoed["messages"]) == (1, 0)
    assert Message.get_by_id(reply.id).provider_message_id == "3EB0ECHO0001"
    # The same echo delivered again is still Baton's (a known id).
    assert post(wasender_app, wasender_message(reply.text, from_me=True,
                                               message_id="3EB0ECHO0001")).json["duplicates"] == 1
    settle(wasender_app)
    assert conversation_of(WA_ID).state == "BOT_CONTROLLED"


def test_wasender_a_person_repeating_batons_words_from_the_phone_is_kept_and_takes_over(wasender_app):  # noqa: F811
    post(wasender_app, wasender_message("hello"))
    settle(wasender_app)
    reply = bot_reply()
    post(wasender_app, wasender_message(reply.text, from_me=True, message_id="3EB0ECHO0002"))   # Baton's echo
    # A minute later someone on the business phone sends the same words.
    human = post(wasender_app, wasender_message(reply.text, from_me=True, message_id="3EB0HUMAN0001")).json
    assert (human["messages"], human["duplicates"]) == (1, 0)
    settle(wasender_app)
    kept = Message.get(Message.provider_message_id == "3EB0HUMAN0001")
    assert (kept.direction, kept.sender, kept.text, kept.routed_to) == ("out", "agent", reply.text, "none")
    conv = Conversation.get_by_id(kept.conversation_id)
    assert (conv.state, conv.escalation_reason) == ("AGENT_CONTROLLED", "agent_takeover")


def test_wasender_a_person_writing_while_batons_send_awaits_its_echo_is_kept_and_the_echo_still_matches(
        wasender_app):  # noqa: F811
    post(wasender_app, wasender_message("hello"))
    settle(wasender_app)
    reply = bot_reply()
    human = post(wasender_app, wasender_message("Tom from the shop here", from_me=True,
                                                message_id="3EB0HUMAN0002")).json
    assert human["messages"] == 1
    assert Message.get_by_id(reply.id).provider_message_id.isdigit()    # not taken by the person's message
    assert post(wasender_app, wasender_message(reply.text, from_me=True,
                                               message_id="3EB0ECHO0003")).json["duplicates"] == 1
    assert Message.get_by_id(reply.id).provider_message_id == "3EB0ECHO0003"


def test_cloud_api_a_person_repeating_batons_words_from_the_business_app_is_kept(desk):
    customer_says(desk, "hello")
    settle(desk)
    reply = bot_reply()
    assert reply.status == "sent" and reply.text
    raw, headers = cloud_api_echo(reply.text)
    answer = desk.test_client().post("/webhooks/whatsapp", data=raw, headers=headers).json
    assert (answer["messages"], answer["duplicates"]) == (1, 0)
    settle(desk)
    copies = list(Message.select().where((Message.text == reply.text) & (Message.direction == "out"))
                  .order_by(Message.seq))
    assert [m.sender for m in copies] == [reply.sender, "agent"]
    assert conversation_of().state == "AGENT_CONTROLLED"
