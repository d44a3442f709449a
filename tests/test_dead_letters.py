"""Dead letters: a message whose routing keeps raising is set aside after
ROUTE_MAX_ATTEMPTS, with its error, and its conversation moves on to the next
message, in order. Admins list and retry it (API and CLI); a metric and the
`message.dead_lettered` event report it."""
from __future__ import annotations

import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import routing.inbound
from models import DeadLetter, Event, Message
from routing.dead_letters import is_routing_failure
from routing.errors import ContendedConversation
from routing.locks import LockLost
from tests.support import bearer, customer_says, settle, settle_until

POISON = "this one cannot be routed"
MAX_ATTEMPTS = 3


class Poison:
    """`decide` raising for one message (a bug met by one message's content),
    recording the order messages are decided in."""

    def __init__(self, monkeypatch):
        self.decided: list[str] = []
        self.active = True
        real = routing.inbound.decide

        def decide(view, msg, policy, now):
            self.decided.append(msg.text)
            if self.active and msg.text == POISON:
                raise ValueError("decide cannot read this message")
            return real(view, msg, policy, now)
        monkeypatch.setattr(routing.inbound, "decide", decide)


@pytest.fixture
def poison(monkeypatch):
    monkeypatch.setattr("jobs.pump.RETRY_FAILED_KEY_AFTER", 0.0)      # retries are due at once
    return Poison(monkeypatch)


@pytest.fixture
def dl_app(app_factory, n8n):
    return app_factory(ROUTE_MAX_ATTEMPTS=MAX_ATTEMPTS, N8N_NOTIFY_URL=n8n.url_for("baton-notify"))


def texts_in_order(conversation_id: str) -> list[tuple[str, str | None]]:
    return [(m.text, m.routed_to) for m in Message.select().where(
        (Message.conversation == conversation_id) & (Message.direction == "in")).order_by(Message.seq)]


def poisoned_conversation(app, poison) -> str:
    """One message routed, then the poison, then two more, all before routing runs."""
    start = int(time.time()) - 10
    for second, text in enumerate(("hello", POISON, "are you there?", "hello again")):
        customer_says(app, text, timestamp=start + second)
    settle_until(app, lambda: DeadLetter.select().exists() and not Message.select().where(
        Message.routed_to.is_null()).exists(), timeout=20, what="the poison to be set aside")
    return Message.get(Message.text == POISON).conversation_id


def test_a_poison_message_is_set_aside_after_max_attempts_and_the_rest_follow_in_order(dl_app, poison, n8n):
    conversation_id = poisoned_conversation(dl_app, poison)
    # Nothing after the poison was decided before it was set aside: order holds.
    assert poison.decided == ["hello"] + [POISON] * MAX_ATTEMPTS + ["are you there?", "hello again"]
    assert texts_in_order(conversation_id) == [("hello", "bot"), (POISON, "dead_letter"),
                                               ("are you there?", "bot"), ("hello again", "bot")]
    [letter] = DeadLetter.select()
    assert letter.attempts == MAX_ATTEMPTS and letter.retried_at is None
    assert letter.error.startswith("ValueError: decide cannot read this message")
    assert "Traceback" in letter.error
    assert Message.get(Message.text == POISON).attempts == MAX_ATTEMPTS
    [audit] = Event.select().where(Event.reason == "dead_lettered")
    assert audit.details == {"message_id": letter.message_id, "dead_letter_id": letter.id, "attempts": MAX_ATTEMPTS}
    settle_until(dl_app, lambda: n8n.received("message.dead_lettered"), what="the event")
    [event] = n8n.received("message.dead_lettered")
    assert event["signature_ok"]
    body = event["json"]
    assert body["message"]["id"] == letter.message_id and body["message"]["routed_to"] == "dead_letter"
    assert body["dead_letter"] == {"id": letter.id, "attempts": MAX_ATTEMPTS,
                                   "error": "ValueError: decide cannot read this message",
                                   "retry_url": f"/api/v1/admin/dead-letters/{letter.id}/retry"}
    assert body["conversation"]["id"] == conversation_id
    assert body["console_url"].endswith(f"/console/conversations/{conversation_id}")


def test_a_failure_below_the_limit_keeps_the_conversation_waiting(app, monkeypatch):
    poison = Poison(monkeypatch)              # retried after the pump's usual 5 s
    start = int(time.time()) - 10
    customer_says(app, POISON, timestamp=start)
    customer_says(app, "after it", timestamp=start + 1)
    settle(app)
    # Still the head of its inbox, waiting for its retry; the next one waits behind it.
    assert poison.decided == [POISON]
    assert not DeadLetter.select().exists()
    assert Message.get(Message.text == POISON).attempts == 1
    assert Message.get(Message.text == "after it").routed_to is None


def test_admins_list_and_retry_dead_letters_and_the_metric_counts_them(dl_app, poison, admin_token, bot_token):
    conversation_id = poisoned_conversation(dl_app, poison)
    client = dl_app.test_client()
    assert "baton_dead_letters 1.0" in client.get("/metrics").get_data(as_text=True)
    listed = client.get("/api/v1/admin/dead-letters", headers=bearer(admin_token))
    assert listed.status_code == 200
    [item] = listed.json["items"]
    assert item["conversation_id"] == conversation_id and item["attempts"] == MAX_ATTEMPTS
    assert item["message"]["text"] == POISON and item["message"]["routed_to"] == "dead_letter"
    assert item["retried_at"] is None and item["error"].startswith("ValueError")
    assert client.get("/api/v1/admin/dead-letters", headers=bearer(bot_token)).status_code == 403
    assert client.get("/api/v1/admin/dead-letters?status=lost", headers=bearer(admin_token)).status_code == 422

    poison.active = False                    # the bug is fixed
    retried = client.post(f"/api/v1/admin/dead-letters/{item['id']}/retry", headers=bearer(admin_token))
    assert retried.status_code == 200 and retried.json["retried_at"] is not None
    settle(dl_app)
    assert texts_in_order(conversation_id)[1] == (POISON, "bot")
    assert Message.get(Message.text == POISON).attempts == 0
    assert client.get("/api/v1/admin/dead-letters", headers=bearer(admin_token)).json["items"] == []
    [old] = client.get("/api/v1/admin/dead-letters?status=retried", headers=bearer(admin_token)).json["items"]
    assert old["id"] == item["id"]
    assert "baton_dead_letters 0.0" in client.get("/metrics").get_data(as_text=True)
    again = client.post(f"/api/v1/admin/dead-letters/{item['id']}/retry", headers=bearer(admin_token))
    assert again.status_code == 409 and again.json["error"] == "already_retried"
    missing = client.post("/api/v1/admin/dead-letters/dlq_nope/retry", headers=bearer(admin_token))
    assert missing.status_code == 404
    assert Event.select().where(Event.reason == "dead_letter_retried").count() == 1


def test_a_retried_message_that_fails_again_is_set_aside_again(dl_app, poison, admin_token):
    poisoned_conversation(dl_app, poison)
    first = DeadLetter.get()
    client = dl_app.test_client()
    assert client.post(f"/api/v1/admin/dead-letters/{first.id}/retry",
                       headers=bearer(admin_token)).status_code == 200
    settle_until(dl_app, lambda: DeadLetter.select().count() == 2, timeout=20, what="a second dead letter")
    second = DeadLetter.select().order_by(DeadLetter.created_at.desc(), DeadLetter.id.desc()).first()
    assert second.id != first.id and second.retried_at is None and second.attempts == MAX_ATTEMPTS
    assert Message.get(Message.text == POISON).routed_to == "dead_letter"


def test_the_cli_lists_and_retries_dead_letters(dl_app, poison):
    poisoned_conversation(dl_app, poison)
    letter = DeadLetter.get()
    runner = dl_app.test_cli_runner()
    listed = runner.invoke(args=["baton", "dead-letters", "list"])
    assert listed.exit_code == 0 and letter.id in listed.output and "ValueError" in listed.output
    poison.active = False
    retried = runner.invoke(args=["baton", "dead-letters", "retry", letter.id])
    assert retried.exit_code == 0, retried.output
    settle(dl_app)
    assert Message.get(Message.text == POISON).routed_to == "bot"
    assert "no dead letters" in runner.invoke(args=["baton", "dead-letters", "list"]).output
    assert letter.id in runner.invoke(args=["baton", "dead-letters", "list", "--all"]).output
    twice = runner.invoke(args=["baton", "dead-letters", "retry", letter.id])
    assert twice.exit_code != 0 and "retried already" in twice.output


@pytest.mark.parametrize("exc, counted", [
    (ValueError("a bug"), True),
    (KeyError("missing"), True),
    (RedisConnectionError("Redis restarting"), False),
    (LockLost("baton:lock:c_1"), False),
    (ContendedConversation("c_1", 8), False),
])
def test_only_the_messages_own_failures_count_towards_the_limit(exc, counted):
    assert is_routing_failure(exc) is counted
