"""WASender end to end, human takeover from the business phone, and recovery
of work a crashed worker dropped."""
import time

import orjson
import pytest

from models import BotTurn, Conversation, Event, Message, OutboxEntry
from tests.support import run_jobs, text_webhook

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
    run_jobs(wasender_app.extensions["baton"])
    sends = [body for method, path, headers, body in wasender_api.requests if path == "/api/send-message"]
    assert len(sends) == 1 and sends[0]["to"] == "+5551234567"
    assert Message.get(Message.direction == "out").status == "sent"


def test_a_wrong_wasender_signature_is_401_and_nothing_is_stored(wasender_app):
    response = post(wasender_app, wasender_message("hello"), secret="guess")
    assert response.status_code == 401
    assert Message.select().count() == 0


def test_the_echo_of_batons_own_reply_is_not_taken_for_a_human(wasender_app):
    post(wasender_app, wasender_message("hello"))
    run_jobs(wasender_app.extensions["baton"])
    reply = Message.get(Message.direction == "out")
    echoed = post(wasender_app, wasender_message(reply.text, from_me=True))
    assert echoed.json["duplicates"] == 1
    run_jobs(wasender_app.extensions["baton"])
    assert Conversation.get().state == "BOT_CONTROLLED"


def test_a_human_replying_from_the_business_phone_silences_the_bot(wasender_app, wasender_api):
    post(wasender_app, wasender_message("hello"))
    run_jobs(wasender_app.extensions["baton"])
    post(wasender_app, wasender_message("Hi Rita, it's Tom from the shop, I'll help you.", from_me=True))
    run_jobs(wasender_app.extensions["baton"])
    conv = Conversation.get()
    assert (conv.state, conv.escalation_reason) == ("AGENT_CONTROLLED", "agent_takeover")
    assert Event.get(Event.to_state == "AGENT_CONTROLLED").reason == "agent_takeover"
    sends_before = len(wasender_api.requests)
    post(wasender_app, wasender_message("great, thanks"))
    run_jobs(wasender_app.extensions["baton"])
    assert Message.get(Message.text == "great, thanks").routed_to == "agent"
    assert len(wasender_api.requests) == sends_before          # the bot said nothing


def test_a_builtin_bot_answer_lost_with_a_crashed_worker_is_given_by_the_sweep(client, rt, monkeypatch):
    from jobs import timers
    from jobs.context import set_runtime

    monkeypatch.setattr("routing.dispatch.rule_bot_reply", crash)
    raw, headers = text_webhook("15553330001", "hello")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    run_jobs(rt)                         # the worker dies right after routing, before the bot answered
    monkeypatch.undo()
    assert Message.get(Message.direction == "in").routed_to == "bot"
    assert BotTurn.get().answered_at is None and OutboxEntry.select().count() == 0
    set_runtime(rt)
    time.sleep(1.1)
    timers.sweep()
    run_jobs(rt)
    assert OutboxEntry.select().count() == 1
    assert BotTurn.get().answered_at is not None


def test_a_stale_builtin_turn_is_closed_by_the_sweep_without_speaking(client, rt, monkeypatch, bot_token):
    from jobs import timers
    from jobs.context import set_runtime

    monkeypatch.setattr("routing.dispatch.rule_bot_reply", crash)
    raw, headers = text_webhook("15553330002", "hello")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    run_jobs(rt)
    monkeypatch.undo()
    conv = Conversation.get()
    client.post(f"/api/v1/conversations/{conv.id}/escalate", json={"reason": "bot"},
                headers={"Authorization": f"Bearer {bot_token}"})
    set_runtime(rt)
    time.sleep(1.1)
    timers.sweep()
    run_jobs(rt)
    assert BotTurn.get().answered_at is not None
    assert [e.payload["text"]["body"][:6] for e in OutboxEntry.select()] == ["Thanks"]


def test_a_builtin_bot_turn_is_answered_once_even_when_two_workers_answer_it(client, rt, monkeypatch):
    from routing.apply import load_conversation, turn_body
    from routing.dispatch import dispatch
    from routing.effects import Effects

    monkeypatch.setattr("routing.dispatch.rule_bot_reply", crash)
    raw, headers = text_webhook("15553330003", "hello")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    run_jobs(rt)                          # routed, turn issued, answer lost
    monkeypatch.undo()
    turn = BotTurn.get()
    body = {"event": "bot.turn", **turn_body(rt.settings, load_conversation(turn.conversation_id),
                                             Message.get_by_id(turn.message_id), turn)}
    dispatch(rt, Effects(builtin_turns=[body]))      # the stalled worker wakes up…
    dispatch(rt, Effects(builtin_turns=[body]))      # …and the sweep answers too
    run_jobs(rt)
    assert Message.select().where(Message.direction == "out").count() == 1
    assert OutboxEntry.select().count() == 1
