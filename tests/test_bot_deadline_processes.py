"""The bot's reply deadline with Baton as real processes (gunicorn, RQ workers, RQ cron):
the deadline is a database column the cron reads, so killing every process while a
turn waits for the AI branch loses nothing: after the restart the customer still gets
BOT_FALLBACK_NOTICE, once, and the late reply is refused."""
from __future__ import annotations

import time

import pytest
import requests

from models import BotTurn, Conversation, utcnow
from tests.harness import customers_say
from tests.support import bearer, outbox_texts

pytestmark = pytest.mark.processes


def test_a_reply_deadline_survives_every_process_being_killed(start_baton, rt, n8n, bot_token):
    procs = start_baton(N8N_BOT_URL=n8n.url_for("bot"), BOT_REPLY_TIMEOUT="3", SENTIMENT_LANGUAGES="")
    customers_say(procs.url, ["15550000011"], "where is my order?")
    [event] = procs.wait_until(lambda: n8n.received("bot.turn"), what="a bot.turn at the fake n8n")
    turn = event["json"]
    procs.kill_all()                      # nobody answers, and nothing runs when the deadline passes
    row = BotTurn.get_by_id(turn["turn_id"])
    assert row.closed_at is None and row.deadline_at is not None
    while utcnow() <= row.deadline_at:
        time.sleep(0.2)
    assert outbox_texts() == []

    procs.restart_all()
    notice = rt.settings.BOT_FALLBACK_NOTICE
    procs.wait_until(lambda: outbox_texts() == [notice], timeout=30, what="the fallback notice to be sent",
                     describe=lambda: f"outbox: {outbox_texts()}")
    late = requests.post(f"{procs.url}/api/v1/bot/replies", headers=bearer(bot_token), timeout=30, json={
        "conversation_id": turn["conversation"]["id"], "turn_id": turn["turn_id"], "text": "It ships today"})
    assert late.status_code == 409 and late.json()["error"] == "stale_turn", late.text
    procs.settle_quiet(rt, hold=2.0)      # a few more cron ticks: still one notice
    assert outbox_texts() == [notice]
    assert BotTurn.get_by_id(turn["turn_id"]).outcome == "timeout"
    assert Conversation.get_by_id(turn["conversation"]["id"]).bot_failures == 1


def test_the_breaker_is_shared_by_every_process(start_baton, rt, n8n):
    """Two RQ workers deliver, two web workers answer: the failures any of them sees open
    the one breaker in Redis, every process then sends turns to the built-in bot, and the
    probe one of them sends closes it for all."""
    from routing.bot_breaker import BotBreaker

    procs = start_baton(N8N_BOT_URL=n8n.url_for("bot"), BOT_BREAKER_FAILURES="3", EVENT_MAX_ATTEMPTS="1",
                        BOT_BREAKER_COOLDOWN="600", BOT_FAILURE_LIMIT="100", SENTIMENT_LANGUAGES="")
    breaker = BotBreaker(rt.redis, rt.settings.REDIS_PREFIX, 3, 600)
    n8n.fail("bot")
    customers_say(procs.url, ["15550000021", "15550000022", "15550000023"], "hello")
    procs.wait_until(lambda: breaker.read().state == "open", what="the breaker to open",
                     describe=lambda: f"breaker: {breaker.read()}, refused: {len(n8n.refused)}")
    procs.settle_quiet(rt)
    refused = len(n8n.refused)
    assert refused == 3

    customers_say(procs.url, ["15550000024", "15550000025"], "hi")
    procs.settle_quiet(rt)
    assert len(n8n.refused) == refused                 # nobody asked n8n while it is open
    for wa_id in ("15550000024", "15550000025"):
        assert outbox_texts(wa_id)[0].startswith("Hi! 👋"), outbox_texts(wa_id)

    n8n.recover("bot")
    rt.redis.hset(breaker.key, "since", repr(time.time() - 601))      # the cool-down has passed
    customers_say(procs.url, ["15550000026"], "hello again")
    procs.wait_until(lambda: breaker.read().state == "closed", what="the probe to close the breaker")
    customers_say(procs.url, ["15550000027"], "and again")
    procs.wait_until(lambda: len(n8n.received("bot.turn")) == 2, what="turns to reach n8n again")
    assert sorted(e["json"]["message"]["text"] for e in n8n.received("bot.turn")) == ["and again", "hello again"]
