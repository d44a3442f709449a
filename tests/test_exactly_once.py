"""A send whose answer is lost is never sent twice (issue 8, part 2).

The request went out and no answer came back: Meta may have accepted the
message. Baton marks it `unknown` and waits up to SEND_RECONCILE_SECONDS for a
status webhook carrying its id in `biz_opaque_callback_data` (WASender: its
echo); only when none comes does it send the message again. A connection that
never opened is retried at once. The fake Graph API is real HTTP; the lost
answer is a read timeout raised after the fake accepted the message."""
from __future__ import annotations

import socket
import threading
import time

import orjson
import pytest
import requests

from integrations.whatsapp.base import NOT_SENT, UNKNOWN, OutboundMessage, SendError, transport_error
from integrations.whatsapp.cloud_api import CloudApiAdapter
from models import Message
from tests.fixtures.samples import cloud_headers
from tests.support import CUSTOMER, TEST_APP_SECRET, customer_says, outbound_time_passes, settle
from tests.test_takeover_and_recovery import post, wasender_app, wasender_message  # noqa: F401  (fixture)

RECONCILE = 30      # SEND_RECONCILE_SECONDS: never waited for; tests move the clock on (outbound_time_passes)


@pytest.fixture
def cloud_app(app_factory, graph_api):
    return app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                       WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v",
                       SEND_RECONCILE_SECONDS=RECONCILE)


def accepted(graph_api) -> list[dict]:
    """Bodies the fake Graph API accepted (answered with a wamid), in arrival order."""
    return [body for method, path, _, body in graph_api.requests
            if path.endswith("/messages") and body and body.get("type")]


def answers_lost(app, times: int, *, accepted_first: bool):
    """The next `times` sends lose their answer: a read timeout after the request
    went out (`accepted_first`: the provider took the message before the answer
    was lost). Returns the list of wamids the provider gave out."""
    adapter = app.extensions["baton"].adapter
    real_send, lost, wamids = adapter.send, [times], []

    def send(message: OutboundMessage):
        if lost[0] > 0:
            lost[0] -= 1
            if accepted_first:
                wamids.append((message.reference, real_send(message).provider_message_id))
            raise transport_error(requests.ReadTimeout("read timed out"))
        return real_send(message)

    adapter.send = send
    return wamids


def status_webhook(app, wamid: str, status: str = "sent", reference: str | None = None):
    value = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": CUSTOMER}
    if reference:
        value["biz_opaque_callback_data"] = reference
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "sandbox-1"},
                                       "statuses": [value]}}]}]})
    response = app.test_client().post("/webhooks/whatsapp", data=body, headers=cloud_headers(body, TEST_APP_SECRET))
    assert response.status_code == 200, response.json
    return response.json


def test_a_lost_answer_is_reconciled_by_the_status_webhook_and_never_sent_twice(cloud_app, graph_api):
    wamids = answers_lost(cloud_app, 1, accepted_first=True)
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    reply = Message.get(Message.direction == "out")
    assert (reply.status, reply.provider_message_id, reply.attempts) == ("unknown", None, 1)
    [(reference, wamid)] = wamids
    assert reference == reply.id and accepted(graph_api)[0]["biz_opaque_callback_data"] == reply.id

    status_webhook(cloud_app, wamid, "delivered", reference=reply.id)
    reply = Message.get_by_id(reply.id)
    assert (reply.status, reply.provider_message_id, reply.next_attempt_at) == ("delivered", wamid, None)
    outbound_time_passes(cloud_app, RECONCILE + 1)          # past SEND_RECONCILE_SECONDS: nothing is sent again
    settle(cloud_app)
    assert len(accepted(graph_api)) == 1
    status_webhook(cloud_app, wamid, "read")          # its later statuses find it by the wamid
    assert Message.get_by_id(reply.id).status == "read"


def test_the_next_message_waits_for_the_reconciliation_then_goes_at_once(cloud_app, graph_api):
    from models import ApiToken, BotTurn

    wamids = answers_lost(cloud_app, 1, accepted_first=True)
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    turn, token = BotTurn.get(), ApiToken.issue("bot", "bot")[1]
    followed = cloud_app.test_client().post("/api/v1/bot/replies", headers={"Authorization": f"Bearer {token}"},
                                            json={"conversation_id": turn.conversation_id, "turn_id": turn.id,
                                                  "text": "and one more thing"})
    assert followed.status_code in (200, 202), followed.json
    settle(cloud_app)
    assert [b.get("text", {}).get("body") for b in accepted(graph_api)][1:] == []     # held behind the unknown
    [(reference, wamid)] = wamids
    status_webhook(cloud_app, wamid, "sent", reference=reference)
    settle(cloud_app)                   # long before SEND_RECONCILE_SECONDS would have passed
    assert [b["text"]["body"] for b in accepted(graph_api)][1:] == ["and one more thing"]


def test_without_a_status_the_message_is_sent_again_after_the_reconcile_time(cloud_app, graph_api):
    answers_lost(cloud_app, 1, accepted_first=False)
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    reply = Message.get(Message.direction == "out")
    assert reply.status == "unknown" and accepted(graph_api) == []
    settle(cloud_app)
    assert Message.get_by_id(reply.id).status == "unknown" and accepted(graph_api) == []    # waits to be reconciled
    outbound_time_passes(cloud_app, RECONCILE + 1)
    settle(cloud_app)
    assert Message.get_by_id(reply.id).status == "sent"                 # nothing named it: sent again
    [body] = accepted(graph_api)
    assert body["biz_opaque_callback_data"] == reply.id
    assert Message.get_by_id(reply.id).attempts == 2


def test_a_status_that_arrives_before_the_answer_is_kept(cloud_app, graph_api):
    """Meta's `sent` webhook can beat the HTTP answer: the message takes it, and
    the answer that follows changes nothing."""
    adapter = cloud_app.extensions["baton"].adapter
    real_send = adapter.send

    def send(message):
        result = real_send(message)
        status_webhook(cloud_app, result.provider_message_id, "delivered", reference=message.reference)
        return result

    adapter.send = send
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    reply = Message.get(Message.direction == "out")
    assert reply.status == "delivered" and reply.provider_message_id.startswith("wamid.")
    assert len(accepted(graph_api)) == 1


def test_a_status_naming_an_unknown_or_foreign_id_changes_nothing(cloud_app, graph_api):
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    reply = Message.get(Message.direction == "out")
    assert status_webhook(cloud_app, "wamid.OTHER", "read", reference="m_not_ours")["statuses"] == 1
    assert status_webhook(cloud_app, "wamid.OTHER2", "read", reference=reply.id)["statuses"] == 1
    row = Message.get_by_id(reply.id)
    assert (row.status, row.provider_message_id) == ("sent", reply.provider_message_id)   # already accepted


def test_a_wasender_send_whose_answer_was_lost_is_reconciled_by_its_echo(wasender_app):  # noqa: F811
    adapter = wasender_app.extensions["baton"].adapter
    real_send, lost = adapter.send, [1]

    def send(message):
        if lost[0]:
            lost[0] -= 1
            real_send(message)
            raise transport_error(requests.ReadTimeout("read timed out"))
        return real_send(message)

    adapter.send = send
    assert post(wasender_app, wasender_message("hello")).json["messages"] == 1
    settle(wasender_app)
    reply = Message.get(Message.direction == "out")
    assert reply.status == "unknown"
    echoed = post(wasender_app, wasender_message(reply.text, from_me=True, message_id="3EB0ECHOLOST"))
    assert echoed.json["duplicates"] == 1
    row = Message.get_by_id(reply.id)
    assert (row.status, row.provider_message_id) == ("sent", "3EB0ECHOLOST")
    assert Message.select().count() == 2


# -- where a failed call stopped ---------------------------------------------------------------------

def test_a_connection_that_never_opened_is_not_sent_and_a_read_timeout_is_unknown():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                    # nobody listens: the request is never written
    adapter = CloudApiAdapter("secret", "token", api_base=f"http://127.0.0.1:{port}/v23.0", timeout=0.3)
    with pytest.raises(SendError) as refused:
        adapter.send(OutboundMessage(to=CUSTOMER, phone_number_id="1", text="hi"))
    assert refused.value.stage == NOT_SENT

    silent = socket.socket()                          # accepts, reads, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    adapter = CloudApiAdapter("secret", "token", api_base=f"http://127.0.0.1:{silent.getsockname()[1]}/v23.0",
                              timeout=0.3)
    try:
        with pytest.raises(SendError) as lost:
            adapter.send(OutboundMessage(to=CUSTOMER, phone_number_id="1", text="hi"))
        assert lost.value.stage == UNKNOWN
    finally:
        silent.close()


# -- the provider took it, the outcome was never written ---------------------------------------------

def outcome_not_recorded(monkeypatch, times: int = 2) -> None:
    """The next `times` writes of send outcomes fail, as when the database goes away (or
    the worker is killed) between the provider's answer and the write: the pump records
    its answers, then records them again on its way out."""
    import peewee

    from jobs.send import Sender

    real_record, failing = Sender._record, [times]

    def record(self, answered):
        if failing[0] > 0:
            failing[0] -= 1
            raise peewee.OperationalError("server closed the connection unexpectedly")
        return real_record(self, answered)

    monkeypatch.setattr(Sender, "_record", record)


def test_a_send_whose_outcome_was_never_written_waits_for_its_status_and_is_not_sent_twice(
        cloud_app, graph_api, monkeypatch):
    """Found by tests/chaos (PostgreSQL down while a pump held an accepted send): the
    message stayed `queued`, so the next pump sent it again at once."""
    outcome_not_recorded(monkeypatch)
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    [first] = graph_api.accepted
    reply = Message.get(Message.direction == "out")
    assert reply.status == "queued" and reply.next_attempt_at is not None     # waits to be reconciled
    settle(cloud_app)
    assert len(graph_api.accepted) == 1
    status_webhook(cloud_app, first.wamid, "delivered", reference=reply.id)
    outbound_time_passes(cloud_app, RECONCILE + 1)          # past SEND_RECONCILE_SECONDS: nothing is sent again
    settle(cloud_app)
    assert len(graph_api.accepted) == 1
    reply = Message.get_by_id(reply.id)
    assert (reply.status, reply.provider_message_id) == ("delivered", first.wamid)


def test_a_send_whose_outcome_was_never_written_goes_again_when_no_status_names_it(
        cloud_app, graph_api, monkeypatch):
    from jobs import timers

    outcome_not_recorded(monkeypatch)
    customer_says(cloud_app, "hi")
    settle(cloud_app)
    reply = Message.get(Message.direction == "out")
    assert [a.reference for a in graph_api.accepted] == [reply.id]
    outbound_time_passes(cloud_app, RECONCILE + 1)  # SEND_RECONCILE_SECONDS pass; REQUEUE_AFTER (1 s) later the
    settle(cloud_app)                   # cron's sweep finds it (the pump that sent it never scheduled it)
    assert [a.reference for a in graph_api.accepted] == [reply.id]

    outbound_time_passes(cloud_app, cloud_app.extensions["baton"].settings.REQUEUE_AFTER)
    timers.sweep()
    settle(cloud_app)
    assert Message.get_by_id(reply.id).status == "sent"
    assert [a.reference for a in graph_api.accepted] == [reply.id, reply.id]


def test_a_sandbox_send_whose_outcome_was_never_written_is_reconciled_and_not_sent_twice(app_factory, monkeypatch):
    """Found by tests/test_processes.py once worker threads ran the outbound lane beside the
    inbound one: a worker killed between the sandbox's outbox row and the pump's record left
    the reply `queued`, and SEND_RECONCILE_SECONDS later it went out a second time (no status
    webhook ever names a sandbox send). The sandbox now reconciles in the outbox's transaction."""
    from jobs import timers
    from tests.support import outbox_texts

    sandbox_app = app_factory(SEND_RECONCILE_SECONDS=0.5)
    outcome_not_recorded(monkeypatch)
    customer_says(sandbox_app, "hi")
    settle(sandbox_app)
    reply = Message.get(Message.direction == "out")
    [entry] = outbox_texts()
    assert (reply.status, reply.attempts, reply.next_attempt_at) == ("sent", 1, None)
    assert reply.provider_message_id.startswith("wamid.SANDBOX")
    outbound_time_passes(sandbox_app, 1.6)          # past SEND_RECONCILE_SECONDS and REQUEUE_AFTER
    timers.sweep()
    settle(sandbox_app)
    assert outbox_texts() == [entry]


def test_a_pump_whose_conversation_lock_lapsed_sends_nothing_more_for_it(app, rt):
    """Found by tests/chaos (Redis killed and started again, every key lost): the old
    outbound pump went on sending for a conversation whose lock was gone while a fresh
    pump took it too, and both sent the head message. Now the old pump lets it go."""
    from jobs.context import set_runtime
    from jobs.drain import drain
    from jobs.send import Sender
    from tests.support import conversation_of, outbox_texts

    set_runtime(rt)
    customer_says(app, "hi")
    rt.feeder.flush()
    conversation_id = conversation_of().id
    assert drain([conversation_id]) == {}                # routed: the bot's answer is queued
    sender = Sender(rt, 1)
    sender.take(conversation_id)
    assert conversation_id in sender.slots               # about to be written ahead and called
    rt.redis.delete(f"{rt.settings.REDIS_PREFIX}:outlock:{conversation_id}")     # Redis lost it
    sender.slots[conversation_id].renewed -= 60
    sender.renew_locks()
    sender.step(0)
    assert conversation_id not in sender.slots and outbox_texts() == []
    settle(app)                                          # the pump that holds it now sends it, once
    assert len(outbox_texts()) == 1


def test_two_pumps_holding_one_conversation_send_its_head_once(cloud_app, graph_api):
    """Found by tests/chaos under CI's load (one message sent twice): a pump stalled past
    LOCK_TTL before it noticed that its lock had lapsed, another pump took the
    conversation, and both read the same head message and wrote it ahead, because the
    write-ahead only asked that the message still be `queued`. Now it claims the
    message: it must also still be due, and the other pump's write-ahead has made it due
    only after SEND_RECONCILE_SECONDS. The second pump sends nothing and lets go."""
    from jobs.context import set_runtime
    from jobs.drain import drain
    from jobs.send import Sender
    from tests.support import conversation_of

    rt = cloud_app.extensions["baton"]
    set_runtime(rt)
    customer_says(cloud_app, "hi")
    rt.feeder.flush()
    conversation_id = conversation_of().id
    assert drain([conversation_id]) == {}                # routed: the bot's answer is queued
    stalled, fresh = Sender(rt, 1), Sender(rt, 1)
    stalled.take(conversation_id)
    rt.redis.delete(f"{rt.settings.REDIS_PREFIX}:outlock:{conversation_id}")     # lapsed while it stalled
    fresh.take(conversation_id)
    assert conversation_id in stalled.slots and conversation_id in fresh.slots    # both about to send it
    stalled._release_rate_waiters()
    fresh._release_rate_waiters()
    stalled._flush_calls()                               # written ahead and called ...
    fresh._flush_calls()                                 # ... before its answer is recorded
    for sender in (stalled, fresh):
        while any(slot.future is not None for slot in sender.slots.values()):
            sender.step(0.1)
    assert [body["biz_opaque_callback_data"] for body in accepted(graph_api)] == [
        Message.get(Message.direction == "out").id]
    assert conversation_id not in fresh.slots
