"""WASender end to end, human takeover from the business phone, and recovery
of work a crashed worker dropped."""
import time
from datetime import timedelta

import orjson
import pytest

from models import BotTurn, Conversation, Event, Message, OutboxEntry, utcnow
from tests.support import ASK_FOR_A_HUMAN, customer_says
from tests.support import settle

SECRET = "wasender-hook-secret"


@pytest.fixture
def wasender_app(app_factory, wasender_api):
    return app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=SECRET,
                       WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url)


def wasender_message(text, *, from_me=False, message_id=None, wa_id="5551234567"):
    body = {"event": "messages.upsert", "timestamp": int(time.time()), "data": {"messages": [{
        "key": {"id": message_id or f"3EB0{time.time_ns()}", "fromMe": from_me,
                "remoteJid": f"{wa_id}@s.whatsapp.net", "cleanedSenderPn": None if from_me else wa_id},
        "messageBody": text, "message": {"conversation": text}, "pushName": "Rita"}]}}
    return orjson.dumps(body)


def crash(turn):
    raise RuntimeError("worker died")


def post(app, raw, secret=SECRET):
    return app.test_client().post("/webhooks/wasender", data=raw,
                                  headers={"Content-Type": "application/json", "X-Webhook-Signature": secret})


def test_a_wasender_customer_is_answered_through_the_wasender_api(wasender_app, wasender_api):
    assert post(wasender_app, wasender_message("hello")).json["messages"] == 1
    settle(wasender_app)
    sends = [body for method, path, headers, body in wasender_api.requests if path == "/api/send-message"]
    assert len(sends) == 1 and sends[0]["to"] == "+5551234567"
    assert Message.get(Message.direction == "out").status == "sent"


def test_a_wrong_wasender_signature_is_401_and_nothing_is_stored(wasender_app):
    response = post(wasender_app, wasender_message("hello"), secret="guess")
    assert response.status_code == 401
    assert Message.select().count() == 0


def test_the_echo_of_batons_own_reply_is_not_taken_for_a_human(wasender_app):
    post(wasender_app, wasender_message("hello"))
    settle(wasender_app)
    reply = Message.get(Message.direction == "out")
    echoed = post(wasender_app, wasender_message(reply.text, from_me=True))
    assert echoed.json["duplicates"] == 1
    settle(wasender_app)
    assert Conversation.get().state == "BOT_CONTROLLED"


def test_a_human_replying_from_the_business_phone_silences_the_bot(wasender_app, wasender_api):
    post(wasender_app, wasender_message("hello"))
    settle(wasender_app)
    post(wasender_app, wasender_message("Hi Rita, it's Tom from the shop, I'll help you.", from_me=True))
    settle(wasender_app)
    conv = Conversation.get()
    assert (conv.state, conv.escalation_reason) == ("AGENT_CONTROLLED", "agent_takeover")
    assert Event.get(Event.to_state == "AGENT_CONTROLLED").reason == "agent_takeover"
    sends_before = len(wasender_api.requests)
    post(wasender_app, wasender_message("great, thanks"))
    settle(wasender_app)
    assert Message.get(Message.text == "great, thanks").routed_to == "agent"
    assert len(wasender_api.requests) == sends_before          # the bot said nothing


def test_a_crash_while_the_builtin_bot_answers_leaves_the_message_unrouted_until_it_is_retried(
        app, rt, monkeypatch):
    from jobs import timers
    from jobs.context import set_runtime

    from dataclasses import replace

    monkeypatch.setattr(rt, "policy", replace(rt.policy, bot=crash))
    customer_says(app, "hello", "15553330001")
    settle(app)                          # routing and answering are one transaction: both roll back
    assert Message.get(Message.direction == "in").routed_to is None
    assert BotTurn.select().count() == 0 and OutboxEntry.select().count() == 0
    monkeypatch.undo()
    set_runtime(rt)
    # REQUEUE_AFTER passes: the sweep takes up what has waited that long unrouted.
    Message.update(received_at=utcnow() - timedelta(seconds=rt.settings.REQUEUE_AFTER + 1)) \
        .where(Message.direction == "in").execute()
    timers.sweep()
    settle(app)
    assert Message.get(Message.direction == "in").routed_to == "bot"
    assert BotTurn.get().answered_at is not None
    assert OutboxEntry.select().count() == 1


def test_a_human_replying_from_the_phone_while_an_offer_is_out_withdraws_the_offer(wasender_app):
    from routing.agents import create_agent, set_status

    rt = wasender_app.extensions["baton"]
    ana, _ = create_agent("Ana", "agent", ["support"], 1)
    set_status(rt.presence, ana, "online")
    post(wasender_app, wasender_message(ASK_FOR_A_HUMAN))
    settle(wasender_app)
    assert Conversation.get().offered_agent_id == ana.id
    post(wasender_app, wasender_message("Tom here, on it!", from_me=True))
    settle(wasender_app)
    conv = Conversation.get()
    assert (conv.state, conv.offered_agent_id, conv.assigned_agent_id) == ("AGENT_CONTROLLED", None, None)
    assert rt.presence.loads([ana.id]) == {ana.id: 0}             # Ana's seat is free again
