"""The AI branch answers turns through POST /api/v1/bot/replies, behind the turn guard."""
import hashlib
import hmac
import time

import orjson
import pytest

from models import BotTurn, Conversation, Event, Message, OutboxEntry
from tests.support import ASK_FOR_A_HUMAN, bot_replies, customer_says
from tests.support import TEST_APP_SECRET, bearer, settle


@pytest.fixture
def n8n_app(app_factory, n8n):
    return app_factory(N8N_BOT_URL=n8n.url_for("baton-bot"), N8N_NOTIFY_URL=n8n.url_for("baton-notify"))


@pytest.fixture
def n8n_client(n8n_app):
    return n8n_app.test_client()


def latest_turn(n8n):
    turns = n8n.received("bot.turn")
    assert turns, "no bot.turn reached n8n"
    return turns[-1]["json"]


def turn_for(app, n8n, text: str) -> dict:
    """The customer writes `text`, routing runs: the bot.turn n8n's AI branch received."""
    customer_says(app, text)
    settle(app)
    return latest_turn(n8n)


def test_the_bot_turn_reaches_n8n_signed_with_history_and_a_reply_url(n8n_app, n8n):
    customer_says(n8n_app, "hello")
    settle(n8n_app)
    [event] = n8n.received("bot.turn")
    assert event["signature_ok"] and event["delivery"]
    body = event["json"]
    assert body["event"] == "bot.turn" and body["delivery_id"] == event["delivery"]
    assert body["message"]["text"] == "hello" and body["mode"] == "normal"
    assert body["history"][-1]["text"] == "hello"
    assert body["reply_url"] == "http://baton.test/api/v1/bot/replies"
    assert body["conversation"]["state"] == "BOT_CONTROLLED"


def test_a_bot_reply_is_queued_and_sent_to_the_customer(n8n_app, n8n_client, n8n, bot_token):
    turn = turn_for(n8n_app, n8n, "what are your hours?")
    response = bot_replies(n8n_app, bot_token, turn, text="We open at 9.", intent="hours", language="en")
    assert response.status_code == 202, response.json
    assert response.json["status"] == "queued" and response.json["message"]["status"] == "queued"
    settle(n8n_app)
    assert [e.payload["text"]["body"] for e in OutboxEntry.select()] == ["We open at 9."]
    conv = Conversation.get_by_id(turn["conversation"]["id"])
    assert conv.metadata == {"last_intent": "hours", "preferred_language": "en"}


def test_a_bot_reply_after_escalation_is_refused_and_never_sent(n8n_app, n8n_client, n8n, bot_token):
    turn = turn_for(n8n_app, n8n, "my order is late")
    conversation_id = turn["conversation"]["id"]
    escalated = n8n_client.post(f"/api/v1/conversations/{conversation_id}/escalate", headers=bearer(bot_token),
                                json={"reason": "bot"})
    assert escalated.status_code == 200 and escalated.json["changed"] is True
    response = bot_replies(n8n_app, bot_token, turn, text="Here is your tracking link")
    assert response.status_code == 409
    assert response.json["error"] == "stale_turn"
    settle(n8n_app)
    texts = [e.payload["text"]["body"] for e in OutboxEntry.select()]
    assert "Here is your tracking link" not in texts
    assert len(texts) == 1                      # the handoff notice only
    assert not Message.select().where(Message.text == "Here is your tracking link").exists()


def test_a_bot_reply_queued_before_a_handoff_is_cancelled_not_sent(n8n_app, n8n_client, n8n, bot_token):
    turn = turn_for(n8n_app, n8n, "hello")
    conversation_id = turn["conversation"]["id"]
    accepted = bot_replies(n8n_app, bot_token, turn, text="Let me check that")
    assert accepted.status_code == 202
    # The customer asks for a human before the outbound lane got to the reply.
    customer_says(n8n_app, ASK_FOR_A_HUMAN)
    from jobs.context import set_runtime
    from jobs.drain import drain

    set_runtime(n8n_app.extensions["baton"])
    n8n_app.extensions["baton"].feeder.flush()
    assert drain([conversation_id]) == {}
    assert Conversation.get_by_id(conversation_id).state == "PENDING_AGENT"
    settle(n8n_app)
    reply = Message.get(Message.text == "Let me check that")
    assert reply.status == "failed" and reply.error_title.startswith("cancelled")
    assert "Let me check that" not in [e.payload["text"]["body"] for e in OutboxEntry.select()]


def test_the_bot_escalating_hands_off_with_its_own_words(n8n_app, n8n_client, n8n, bot_token):
    turn = turn_for(n8n_app, n8n, "this is the third time I write")
    response = bot_replies(n8n_app, bot_token, turn, escalate=True, reason="bot", urgency=0.9,
                           text="Sorry! A colleague will take over.")
    assert response.status_code == 200 and response.json["status"] == "escalated"
    settle(n8n_app)
    conv = Conversation.get_by_id(turn["conversation"]["id"])
    assert (conv.state, conv.escalation_reason, conv.escalation_urgency) == ("PENDING_AGENT", "bot", 0.9)
    assert [e.payload["text"]["body"] for e in OutboxEntry.select()] == ["Sorry! A colleague will take over."]
    [requested] = n8n.received("handoff.requested")
    assert requested["json"]["reason"] == "bot" and requested["json"]["console_url"].endswith(conv.id)


def test_repeating_a_reply_with_the_same_idempotency_key_sends_it_once(n8n_app, n8n_client, n8n, bot_token):
    turn = turn_for(n8n_app, n8n, "hello")
    body = {"conversation_id": turn["conversation"]["id"], "turn_id": turn["turn_id"], "text": "Hi!"}
    headers = {**bearer(bot_token), "Idempotency-Key": "reply-1"}
    first = n8n_client.post("/api/v1/bot/replies", headers=headers, json=body)
    again = n8n_client.post("/api/v1/bot/replies", headers=headers, json=body)
    assert first.status_code == again.status_code == 202
    assert first.json == again.json and again.headers["Idempotent-Replayed"] == "true"
    assert Message.select().where(Message.text == "Hi!").count() == 1


@pytest.mark.parametrize("body, status, error", [
    ({"turn_id": "t_x", "text": "hi"}, 422, "validation_failed"),
    ({"conversation_id": "c_x", "turn_id": "t_x"}, 422, "validation_failed"),
    ({"conversation_id": "c_unknown", "turn_id": "t_x", "text": "hi"}, 404, "not_found"),
    ({"conversation_id": "c_x", "turn_id": "t_x", "text": "x" * 5000}, 422, "validation_failed"),
], ids=["no conversation", "says nothing", "unknown conversation", "too long"])
def test_a_reply_that_breaks_a_rule_is_refused_and_changes_nothing(client, bot_token, body, status, error):
    response = client.post("/api/v1/bot/replies", headers=bearer(bot_token), json=body)
    assert response.status_code == status
    assert response.json["error"] == error
    assert Message.select().count() == 0 and Event.select().count() == 0


def test_a_reply_for_a_turn_of_another_conversation_is_404(app, client, work, bot_token):
    customer_says(app, "hello", wa_id="15557770001")
    customer_says(app, "hello", wa_id="15557770002")
    work()
    first, second = list(BotTurn.select().order_by(BotTurn.id))
    before = Message.select().count()
    response = client.post("/api/v1/bot/replies", headers=bearer(bot_token), json={
        "conversation_id": second.conversation_id, "turn_id": first.id, "text": "hi"})
    assert response.status_code == 404
    assert (response.json["error"], response.json["details"]["resource"]) == ("not_found", "turn")
    assert Message.select().count() == before


def test_a_body_that_is_not_json_is_a_400(client, bot_token):
    response = client.post("/api/v1/bot/replies", headers={**bearer(bot_token), "Content-Type": "application/json"},
                           data=b"{nope")
    assert response.status_code == 400 and response.json["error"] == "malformed_json"


def test_no_token_is_401(client):
    response = client.post("/api/v1/bot/replies", json={"conversation_id": "c", "turn_id": "t", "text": "x"})
    assert response.status_code == 401 and response.json["error"] == "unauthorized"


def test_an_unknown_token_is_401(client):
    response = client.post("/api/v1/bot/replies", headers=bearer("bt_forged"),
                           json={"conversation_id": "c", "turn_id": "t", "text": "x"})
    assert response.status_code == 401


def test_an_admin_token_cannot_speak_as_the_bot(client, admin_token):
    response = client.post("/api/v1/bot/replies", headers=bearer(admin_token),
                           json={"conversation_id": "c", "turn_id": "t", "text": "x"})
    assert response.status_code == 403 and response.json["error"] == "forbidden"


def test_a_bot_escalation_during_the_cooldown_after_a_release_is_refused_and_nothing_sent(
        n8n_app, n8n_client, n8n, bot_token):
    turn = turn_for(n8n_app, n8n, "hello")
    # An agent released the conversation a moment ago (the release endpoint comes with agents).
    Conversation.update(cooldown_remaining=2).where(Conversation.id == turn["conversation"]["id"]).execute()
    before = (Message.select().count(), Event.select().count())
    response = bot_replies(n8n_app, bot_token, turn, escalate=True, text="Connecting you")
    assert response.status_code == 409 and response.json["error"] == "cooldown_active"
    assert response.json["details"] == {"cooldown_remaining": 2}
    assert (Message.select().count(), Event.select().count()) == before
    assert Conversation.get_by_id(turn["conversation"]["id"]).state == "BOT_CONTROLLED"


def test_a_customer_tapping_a_talk_to_a_human_button_is_handed_off(client, work):
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"phone_number_id": "sandbox-1"},
            "contacts": [{"profile": {"name": "Bo"}, "wa_id": "15557771234"}],
            "messages": [{"from": "15557771234", "id": "wamid.BTN1", "timestamp": str(int(time.time())),
                          "type": "interactive", "interactive": {"type": "button_reply", "button_reply": {
                              "id": "human", "title": "Talk to a human"}}}]}}]}]})
    signature = hmac.new(TEST_APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    client.post("/webhooks/whatsapp", data=body, headers={"Content-Type": "application/json",
                                                          "X-Hub-Signature-256": f"sha256={signature}"})
    work()
    assert Conversation.get().state == "PENDING_AGENT"
