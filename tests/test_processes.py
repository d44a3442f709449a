"""Stories told against Baton running as real processes: gunicorn with two
workers, RQ workers (`flask baton worker`) and RQ cron, sharing the test's
database and Redis. Every outcome is read back from the database after the
processes have settled.

Run: .venv/bin/pytest tests/test_processes.py            (SQLite)
     BATON_TEST_DATABASE=postgres .venv/bin/pytest tests/test_processes.py
"""
from __future__ import annotations

import random
import sqlite3
import threading
import fcntl
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests

from tests.support import conversation_of, outbox_texts
from tests.harness import BatonProcesses, post_all, state_summary
from tests.support import bearer, text_webhook

pytestmark = pytest.mark.processes


@pytest.fixture
def settings_overrides(settings_overrides):
    """These stories send hundreds of messages the built-in bot does not understand;
    they are about order and exactly-once, so its "hand over after repeated
    fallbacks" rule (BOT_FAILURE_LIMIT) is kept out of the way."""
    return {**settings_overrides, "BOT_FAILURE_LIMIT": "100000"}


@pytest.fixture
def processes(start_baton):
    """gunicorn (2 workers) + 2 RQ workers + RQ cron."""
    return start_baton()


def bot_token() -> str:
    from models import ApiToken

    return ApiToken.issue("n8n-processes", "bot")[1]


# -- stories ---------------------------------------------------------------------------------

def test_a_duplicate_storm_is_stored_once_and_routed_once(processes, rt):
    """Meta retries: the same signed webhook arrives 20 times at once on two gunicorn workers."""
    from models import BotTurn, Message

    raw, headers = text_webhook("15550000001", "hi", message_id="wamid.STORM0001", timestamp=int(time.time()))
    barrier = threading.Barrier(20)

    def fire(_):
        barrier.wait(timeout=10)
        return requests.post(f"{processes.url}/webhooks/whatsapp", data=raw, headers=headers, timeout=30)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(fire, range(20)))

    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    answers = [r.json() for r in responses]
    assert sum(a["messages"] for a in answers) == 1, answers
    assert sum(a["duplicates"] for a in answers) == 19, answers

    processes.settle_quiet(rt)
    inbound = list(Message.select().where(Message.direction == "in"))
    assert len(inbound) == 1
    assert inbound[0].provider_message_id == "wamid.STORM0001" and inbound[0].routed_to == "bot"
    turns = list(BotTurn.select())
    assert [t.message_id for t in turns] == [inbound[0].id], "routed more than once"
    bot_replies = list(Message.select().where((Message.direction == "out") & (Message.sender == "bot")))
    assert len(bot_replies) == 1 and bot_replies[0].status == "sent"
    assert outbox_texts() == [bot_replies[0].text]


def test_racing_human_requests_and_bot_escalation_hand_off_exactly_once(processes, rt):
    """Two explicit requests, two ordinary messages and the bot's own escalate call, all at
    once, across two gunicorn workers and two RQ workers: one handoff, one notice."""
    from models import PENDING_AGENT, Event, Message

    settings = rt.settings
    wa_id = "15550000002"
    base = int(time.time()) - 60
    first = post_all(processes.url, [text_webhook(wa_id, "hello", timestamp=base)])
    assert first[0].status_code == 200, first[0].text
    processes.wait_until(lambda: len(outbox_texts()) == 1, what="the greeting to be sent",
                         describe=lambda: f"state: {state_summary(rt)}")
    conv = conversation_of(wa_id)
    token = bot_token()

    bodies = [text_webhook(wa_id, "what are your opening hours", timestamp=base + 1),
              text_webhook(wa_id, "I want to talk to a human", timestamp=base + 2),
              text_webhook(wa_id, "agent please", timestamp=base + 3),
              text_webhook(wa_id, "my order is late", timestamp=base + 4)]
    barrier = threading.Barrier(len(bodies) + 1)

    def webhook(item):
        raw, headers = item
        barrier.wait(timeout=10)
        return requests.post(f"{processes.url}/webhooks/whatsapp", data=raw, headers=headers, timeout=30)

    def escalate():
        barrier.wait(timeout=10)
        return requests.post(f"{processes.url}/api/v1/conversations/{conv.id}/escalate",
                             json={"reason": "bot"}, headers=bearer(token), timeout=30)

    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        escalating = pool.submit(escalate)
        answers = list(pool.map(webhook, bodies))
        escalation = escalating.result()

    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert sum(a.json()["messages"] for a in answers) == 4
    assert escalation.status_code == 200, escalation.text

    processes.settle_quiet(rt)
    handoffs = list(Event.select().where((Event.conversation == conv.id) & (Event.to_state == PENDING_AGENT)))
    assert len(handoffs) == 1, [(e.actor, e.from_state, e.reason) for e in handoffs]
    texts = outbox_texts()
    assert texts.count(settings.HANDOFF_NOTICE) == 1, texts
    final = conversation_of(wa_id)
    assert final.state == PENDING_AGENT
    # The API call changed the state only if it won the race; it never did both.
    assert escalation.json()["changed"] == (handoffs[0].reason == "bot"), (escalation.json(), handoffs[0].reason)
    inbound = list(Message.select().where(Message.direction == "in"))
    assert len(inbound) == 5 and all(m.routed_to is not None for m in inbound)


def test_two_hundred_shuffled_messages_are_routed_in_payload_timestamp_order(start_baton, rt):
    """Posted in random order while no RQ worker runs; two workers then route them
    strictly by payload timestamp, each exactly once."""
    from models import BotTurn, Event, Message, OutboxEntry

    procs = start_baton(rq_workers=0)
    wa_id = "15550000003"
    base = int(time.time()) - 3600
    order = list(range(200))
    random.Random(7).shuffle(order)
    bodies = [text_webhook(wa_id, f"question {i} about my parcel", message_id=f"wamid.ORDER{i:04d}",
                           timestamp=base + i) for i in order]
    answers = post_all(procs.url, bodies)
    assert [a.status_code for a in answers] == [200] * 200, {a.status_code for a in answers}
    assert sum(a.json()["messages"] for a in answers) == 200
    assert BotTurn.select().count() == 0, "something routed without an RQ worker"

    procs.start_worker()
    procs.start_worker()
    procs.settle_quiet(rt)

    sent_at = {m.id: m.sent_at for m in Message.select().where(Message.direction == "in")}
    assert len(sent_at) == 200
    turns = list(BotTurn.select().order_by(BotTurn.id))
    routed = [t.message_id for t in turns]
    assert len(routed) == len(set(routed)) == 200, (
        "a message was routed twice or never", Counter(m.routed_to for m in Message.select()
                                                       .where(Message.direction == "in")),
        [(e.from_state, e.to_state, e.reason) for e in Event.select()])
    timestamps = [sent_at[mid] for mid in routed]
    out_of_order = [(a, b) for a, b in zip(timestamps, timestamps[1:]) if b <= a]
    assert not out_of_order, f"{len(out_of_order)} inversions, first: {out_of_order[:3]}"
    assert OutboxEntry.select().count() == 200


def test_a_worker_killed_mid_drain_loses_nothing_and_routes_nothing_twice(start_baton, rt):
    """SIGKILL the only worker while it drains; a fresh worker (and the cron sweep)
    finish the job: every message routed once, answered once, sent once."""
    from models import BotTurn, Message

    procs = start_baton(rq_workers=0)
    base = int(time.time()) - 3600
    customers = [f"1555000010{c}" for c in range(3)]
    bodies = [text_webhook(wa, f"line {i} of my complaint", message_id=f"wamid.KILL{c}{i:04d}",
                           timestamp=base + i)
              for i in range(50) for c, wa in enumerate(customers)]
    total = len(bodies)
    answers = post_all(procs.url, bodies)
    assert [a.status_code for a in answers] == [200] * total

    def routed() -> int:
        return Message.select().where((Message.direction == "in") & Message.routed_to.is_null(False)).count()

    def mid_drain() -> bool:
        return total // 5 <= routed() < total

    victim = procs.start_worker()
    procs.wait_until(mid_drain, timeout=30, interval=0.002,
                     what="the first worker to be mid-drain", describe=lambda: f"state: {state_summary(rt)}")
    procs.kill_worker(victim)
    at_kill = routed()
    print(f"killed the worker after {at_kill}/{total} messages were routed")
    assert at_kill < total, "the worker finished before it could be killed; the story did not happen"

    procs.start_worker()
    procs.settle_quiet(rt, timeout=60)

    inbound = {m.id for m in Message.select().where(Message.direction == "in")}
    assert len(inbound) == total
    turns = list(BotTurn.select())
    per_message = Counter(t.message_id for t in turns)
    assert {m for m, n in per_message.items() if n > 1} == set(), "routed twice"
    assert set(per_message) == inbound, f"never routed: {len(inbound - set(per_message))}"
    unanswered = [t.id for t in turns if t.answered_at is None]
    replies = list(Message.select().where((Message.direction == "out") & (Message.sender == "bot")))
    assert not unanswered and len(replies) == total, (
        f"killed after {at_kill}/{total} routed: {len(unanswered)} bot turn(s) never answered "
        f"(e.g. {unanswered[:3]}), {len(replies)} bot replies for {total} messages")
    assert all(r.status == "sent" for r in replies)
    texts = outbox_texts()
    assert len(texts) == total, f"{len(texts)} messages sent to customers for {total} bot replies"


class DatabaseHold:
    """A second database connection that can stop workers from starting their next
    transaction, so a test can look at the database between two of their transactions.

    SQLite: Baton's writer queue (the `-writelock` file) and then the write lock itself, so
    no worker is inside a write transaction or holding its place in the queue.
    PostgreSQL: the tables Baton's workers write locked exclusively (taking the lock waits
    for transactions in flight; routing reads the conversation first, so it waits too)."""

    def __init__(self, database_url: str):
        self.sqlite = database_url.startswith("sqlite:///")
        if self.sqlite:
            path = os.path.abspath(database_url[len("sqlite:///"):])
            self.gate = os.open(path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
            self.conn = sqlite3.connect(path, timeout=5, isolation_level=None)
        else:
            import psycopg2

            self.conn = psycopg2.connect(database_url)
            self.conn.autocommit = True
            self._execute("SET lock_timeout = '5s'")

    def _execute(self, sql: str):
        if self.sqlite:
            return self.conn.execute(sql).fetchall()
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None

    @contextmanager
    def held(self):
        if self.sqlite:
            fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            self._execute("BEGIN IMMEDIATE" if self.sqlite else "BEGIN")
            try:
                if not self.sqlite:
                    self._execute("LOCK TABLE conversation, message, outbox_entry, contact IN ACCESS EXCLUSIVE MODE")
                yield
            finally:
                self._execute("ROLLBACK")
        finally:
            if self.sqlite:
                fcntl.flock(self.gate, fcntl.LOCK_UN)

    def routed_count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM message WHERE direction = 'in' AND routed_to IS NOT NULL")[0][0]

    def close(self) -> None:
        self.conn.close()
        if self.sqlite:
            os.close(self.gate)


def freeze_mid_drain(procs: BatonProcesses, worker: int, database_url: str, total: int,
                     timeout: float = 30.0) -> int:
    """SIGSTOP `worker` between two of its transactions once it has routed some but not
    all of `total` messages; returns how many were routed then."""
    hold = DatabaseHold(database_url)

    def routed() -> int:   # read through the hold's own connection: it has the tables locked
        return hold.routed_count()

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            procs.check_alive()
            try:
                with hold.held():
                    count = routed()
                    if 0 < count < total:
                        procs.pause_worker(worker)
                        return count
            except Exception as exc:   # the hold timed out behind a long transaction: try again
                if "lock" not in str(exc).lower():
                    raise
            time.sleep(0.005)
    finally:
        hold.close()
    raise AssertionError(f"could not freeze the worker mid-drain\n{procs.logs()}")


def test_a_worker_frozen_mid_drain_past_its_lease_routes_and_answers_nothing_twice(start_baton, rt):
    """A worker freezes (GC pause, VM steal) in the middle of a conversation's drain; its
    lock and lease run out and another worker carries on. When the frozen worker wakes up
    it notices it lost the lease and stops: the customer gets exactly one answer per
    message, in the order they wrote."""
    from models import BotTurn, Message

    procs = start_baton(rq_workers=0)
    wa_id = "15550000005"
    base = int(time.time()) - 3600
    total = 60
    bodies = [text_webhook(wa_id, f"detail {i} of my question", message_id=f"wamid.FREEZE{i:04d}",
                           timestamp=base + i) for i in range(total)]
    assert [a.status_code for a in post_all(procs.url, bodies)] == [200] * total

    frozen = procs.start_worker()
    at_freeze = freeze_mid_drain(procs, frozen, rt.settings.DATABASE_URL, total)
    procs.start_worker()
    procs.wait_until(lambda: not Message.select().where((Message.direction == "in")
                                                        & Message.routed_to.is_null()).exists(),
                     timeout=30, what="the other worker to route the rest",
                     describe=lambda: f"froze after {at_freeze}; state: {state_summary(rt)}")
    procs.resume_worker(frozen)
    procs.settle_quiet(rt)

    turns = list(BotTurn.select().order_by(BotTurn.id))
    assert len(turns) == total and len({t.message_id for t in turns}) == total, "routed twice or never"
    replies = list(Message.select().where((Message.direction == "out") & (Message.sender == "bot"))
                   .order_by(Message.id))
    assert Counter(m.turn_id for m in replies) == Counter({t.id: 1 for t in turns}), "answered twice or never"
    sent_order = [Message.get_by_id(t.message_id).text for t in turns]
    assert sent_order == [f"detail {i} of my question" for i in range(total)], "routed out of order"
    assert len(outbox_texts()) == total


def test_a_bot_reply_after_escalation_is_refused_and_never_sent(start_baton, rt, n8n):
    """The n8n AI branch gets a bot.turn, the conversation is escalated meanwhile, and
    the reply that arrives afterwards is answered 409 stale_turn and never sent."""
    from models import PENDING_AGENT, Message

    procs = start_baton(N8N_BOT_URL=n8n.url_for("bot"), N8N_NOTIFY_URL=n8n.url_for("notify"))
    wa_id = "15550000004"
    answer = post_all(procs.url, [text_webhook(wa_id, "where is my order?")])[0]
    assert answer.status_code == 200, answer.text
    turn_event = procs.wait_until(lambda: n8n.received("bot.turn"), what="a bot.turn at the fake n8n",
                                  describe=lambda: f"state: {state_summary(rt)}")[0]
    assert turn_event["signature_ok"]
    turn = turn_event["json"]
    conversation_id, turn_id = turn["conversation"]["id"], turn["turn_id"]
    auth = bearer(bot_token())

    escalated = requests.post(f"{procs.url}/api/v1/conversations/{conversation_id}/escalate",
                              json={"reason": "customer_angry"}, headers=auth, timeout=30)
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["changed"] is True

    late_text = "Your order ships tomorrow (late bot reply)"
    reply = requests.post(f"{procs.url}/api/v1/bot/replies", headers=auth, timeout=30,
                          json={"conversation_id": conversation_id, "turn_id": turn_id, "text": late_text})
    assert reply.status_code == 409, reply.text
    assert reply.json()["error"] == "stale_turn"

    procs.settle_quiet(rt)
    procs.wait_until(lambda: n8n.received("handoff.requested"), what="the handoff.requested event")
    assert outbox_texts() == [rt.settings.HANDOFF_NOTICE]
    assert Message.select().where(Message.text == late_text).count() == 0
    assert conversation_of(wa_id).state == PENDING_AGENT
