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
