"""Retention: each kind of record is forgotten after its RETENTION_DAYS_*
setting, in batches, never while it is in flight; provider payloads kept raw
lose their secrets before they are stored."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from models import BotTurn, Delivery, Event, Message, OutboxEntry, UnsupportedUpdate, utcnow
from routing.retention import REDACTED, RULES, forget_old_records, strip_secrets

from .support import ASK_FOR_A_HUMAN, conversation_of, customer_says, settle

ALL_KINDS = {rule.kind: rule.setting for rule in RULES}
WASENDER_SECRET = "retention-wasender-secret"


def age_everything(days: int) -> None:
    then = utcnow() - timedelta(days=days)
    Message.update(received_at=then).execute()
    Event.update(created_at=then).execute()
    Delivery.update(created_at=then).execute()
    BotTurn.update(created_at=then).execute()
    OutboxEntry.update(created_at=then).execute()
    UnsupportedUpdate.update(created_at=then).execute()


def counts() -> dict[str, int]:
    return {"messages": Message.select().count(), "events": Event.select().count(),
            "deliveries": Delivery.select().count(), "bot_turns": BotTurn.select().count(),
            "outbox": OutboxEntry.select().count(), "unsupported_updates": UnsupportedUpdate.select().count()}


def some_history(app) -> None:
    """Messages in and out, audit events, bot turns, outbox rows, n8n deliveries
    (failed for good: there is no n8n) and an unsupported update."""
    customer_says(app, "hello", wa_id="15550007001")
    customer_says(app, ASK_FOR_A_HUMAN, wa_id="15550007002")
    settle(app)
    UnsupportedUpdate.create(provider="cloud_api", kind="account_update", payload={"x": 1})
    Delivery.create(event_type="handoff.requested", url="http://127.0.0.1:9/x", body="{}", status="failed")


@pytest.fixture
def keep(app):
    """The app's settings with each RETENTION_DAYS_* replaced (the rest kept)."""
    import dataclasses

    base = app.extensions["baton"].settings

    def make(**days):
        values = {name: 0 for name in ALL_KINDS.values()}
        values.update(days)
        return dataclasses.replace(base, **values)
    return make


def test_zero_keeps_every_kind_forever(app, keep):
    some_history(app)
    age_everything(days=3650)
    before = counts()
    assert all(before.values()), before                 # the story made one of each kind

    assert forget_old_records(keep()) == {}
    assert counts() == before


@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_each_kind_goes_after_its_own_days_and_no_other_kind_does(app, keep, kind):
    some_history(app)
    age_everything(days=40)
    before = counts()

    deleted = forget_old_records(keep(**{ALL_KINDS[kind]: 30}))

    after = counts()
    assert deleted == {kind: before[kind]}
    assert after == {**before, kind: 0}


def test_younger_records_stay(app, keep):
    some_history(app)
    age_everything(days=20)
    before = counts()

    assert forget_old_records(keep(**{setting: 30 for setting in ALL_KINDS.values()})) == {
        kind: 0 for kind in ALL_KINDS}
    assert counts() == before


def test_nothing_in_flight_is_deleted(app, keep):
    """An inbound message not routed yet, an outbound one not sent (or whose fate
    is unknown) and a pending delivery survive any retention."""
    customer_says(app, "hello", wa_id="15550007003")     # recorded, not routed: no settle
    conversation = conversation_of("15550007003")
    unsent = [Message.create(conversation=conversation, channel=conversation.channel_id, direction="out",
                             sender="agent", text=f"reply {status}", sent_at=utcnow(), routed_to="none",
                             status=status) for status in ("queued", "unknown")]
    sent = Message.create(conversation=conversation, channel=conversation.channel_id, direction="out",
                          sender="agent", text="done", sent_at=utcnow(), routed_to="none", status="delivered")
    pending = Delivery.create(event_type="handoff.requested", url="http://127.0.0.1:9/x", body="{}")
    age_everything(days=400)

    forget_old_records(keep(RETENTION_DAYS_MESSAGES=30, RETENTION_DAYS_DELIVERIES=30))

    left = {m.id for m in Message.select()}
    assert {m.id for m in unsent} <= left and sent.id not in left
    assert Message.select().where(Message.direction == "in").count() == 1        # the unrouted one
    assert Delivery.get_by_id(pending.id).status == "pending"


def test_deletes_in_batches_and_stops_at_its_budget(app, keep):
    for n in range(7):
        UnsupportedUpdate.create(provider="cloud_api", kind=f"k{n}", payload={})
    age_everything(days=100)
    settings = keep(RETENTION_DAYS_UNSUPPORTED=30)

    assert forget_old_records(settings, batch=3, budget=0) == {"unsupported_updates": 0}    # out of time at once
    assert forget_old_records(settings, batch=3) == {"unsupported_updates": 7}              # 3 + 3 + 1
    assert UnsupportedUpdate.select().count() == 0


@pytest.mark.parametrize("payload, stripped", [
    ({"sessionId": "abc123", "event": "x"}, {"sessionId": REDACTED, "event": "x"}),
    ({"data": [{"api_key": "k", "ok": 1}]}, {"data": [{"api_key": REDACTED, "ok": 1}]}),
    ({"Authorization": "Bearer t", "nested": {"access-token": "t2", "password": ""}},
     {"Authorization": REDACTED, "nested": {"access-token": REDACTED, "password": ""}}),
    ({"token_count": 3, "sessions": ["a"]}, {"token_count": 3, "sessions": ["a"]}),   # only whole key names
    ("plain", "plain"),
    ([1, None, {"secret": 5}], [1, None, {"secret": REDACTED}]),
])
def test_strip_secrets(payload, stripped):
    assert strip_secrets(payload) == stripped


def test_an_unsupported_wasender_update_is_stored_without_its_session_id(app_factory, wasender_api):
    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                      WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url)
    body = {"event": "chats.delete", "sessionId": "session-key-that-must-not-be-kept", "timestamp": 1767350880,
            "data": ["15550002202"]}
    response = app.test_client().post("/webhooks/wasender", data=json.dumps(body), headers={
        "Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET})
    assert response.status_code == 200 and response.json["ignored"] == 1
    (stored,) = UnsupportedUpdate.select()
    assert "session-key-that-must-not-be-kept" not in json.dumps(stored.payload)
    assert stored.payload["sessionId"] == REDACTED and stored.payload["data"] == ["15550002202"]


def test_the_cron_runs_retention(app):
    from jobs import cron

    registered = []

    class Recorder:
        def register(self, func, **kwargs):
            registered.append(func.__name__)

    cron.register_timers(Recorder(), app.extensions["baton"].settings)
    assert "forget_old_records" in registered


def test_the_job_also_forgets_the_spools_old_dead_entries(app_factory):
    """Webhooks the spool could not record keep their raw bodies (WASender's may hold
    its session id): they go after RETENTION_DAYS_UNSUPPORTED, like unsupported updates."""
    import time

    from jobs.context import set_runtime
    from jobs.retention import forget_old_records as job

    app = app_factory(RETENTION_DAYS_UNSUPPORTED=30)
    rt = app.extensions["baton"]
    set_runtime(rt)
    long_ago_ms = int((time.time() - 40 * 86400) * 1000)
    rt.redis.xadd(rt.spool.dead_key, {"provider": "wasender", "raw": "{}", "error": "x"}, id=f"{long_ago_ms}-0")
    young = rt.redis.xadd(rt.spool.dead_key, {"provider": "wasender", "raw": "{}", "error": "y"})

    assert job()["spool_dead_entries"] == 1
    assert [entry_id for entry_id, _ in rt.redis.xrange(rt.spool.dead_key)] == [young]
