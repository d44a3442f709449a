"""The bot's reply deadline and the circuit breaker on the AI branch (issue 10, part 1).

A turn the AI branch does not answer within BOT_REPLY_TIMEOUT, or whose bot.turn
delivery fails for good, is a bot failure: the turn closes (a late reply is 409),
the customer gets BOT_FALLBACK_NOTICE once, and BOT_FAILURE_LIMIT failures in a row
hand the conversation to a person. When deliveries to N8N_BOT_URL keep failing, new
turns go to BOT_FALLBACK until a probe is delivered. The clock is moved by back-dating
the deadline column the cron's timers read (and the breaker's `since`), then the
cron job runs as in production."""
import time
from datetime import timedelta

import pytest

from config import ConfigError, load_settings
from jobs import timers
from models import BotTurn, Conversation, Delivery, Message, OutboxEntry, utcnow
from routing import bot_failures
from routing.bot_breaker import (CLOSED, DELIVER, HALF_OPEN, OPEN, PROBE, REROUTE, Breaker, admit,
                                 after_delivery)
from routing.bot_failures import ESCALATE, FALLBACK, IGNORE, SUPERSEDE, decide_turn_failure
from tests.support import (Team, audit_events, bot_replies, conversation_of, customer_says,
                           outbox_texts, settle, trail)

FALLBACK_TEXT = "Sorry, I can't answer right now."


# -- the pure decisions ---------------------------------------------------------------------------

@pytest.mark.parametrize("open_turn, due, bot_holds, failures, limit, may_escalate, action, after", [
    (True, True, True, 0, 3, True, FALLBACK, 1),
    (True, True, True, 1, 3, True, FALLBACK, 2),
    (True, True, True, 2, 3, True, ESCALATE, 3),
    (True, True, True, 2, 3, False, FALLBACK, 3),      # the cooldown after a release holds the escalation
    (True, True, True, 7, 3, True, ESCALATE, 8),
    (True, True, True, 0, 1, True, ESCALATE, 1),
    (True, True, False, 2, 3, True, SUPERSEDE, 2),     # a human took over: no notice, no count
    (True, False, True, 2, 3, True, IGNORE, 2),        # not due yet
    (False, True, True, 2, 3, True, IGNORE, 2),        # answered or closed already: once per turn
    (False, True, False, 2, 3, True, IGNORE, 2),
], ids=["first", "second", "limit", "limit in cooldown", "past the limit", "limit 1", "human has it",
        "not due", "closed", "closed and human"])
def test_what_a_failed_turn_does(open_turn, due, bot_holds, failures, limit, may_escalate, action, after):
    decision = decide_turn_failure(open_turn=open_turn, due=due, bot_holds=bot_holds, failures=failures,
                                   limit=limit, may_escalate=may_escalate)
    assert (decision.action, decision.failures) == (action, after)


@pytest.mark.parametrize("intent, before, after", [
    ("fallback", 0, 1), ("fallback", 2, 3), ("hours", 2, 0), (None, 5, 0)])
def test_a_reply_adds_to_or_ends_the_run_of_failures(intent, before, after):
    assert bot_failures.failures_after_reply(before, intent) == after


@pytest.mark.parametrize("breaker, now, decision, state, since", [
    (Breaker(), 100.0, DELIVER, CLOSED, 0.0),
    (Breaker(CLOSED, 4, 0.0), 100.0, DELIVER, CLOSED, 0.0),
    (Breaker(OPEN, 5, 90.0), 100.0, REROUTE, OPEN, 90.0),          # cooling down
    (Breaker(OPEN, 5, 70.0), 100.0, PROBE, HALF_OPEN, 100.0),      # cool-down over: this turn probes
    (Breaker(HALF_OPEN, 5, 95.0), 100.0, REROUTE, HALF_OPEN, 95.0),  # a probe is out
    (Breaker(HALF_OPEN, 5, 60.0), 100.0, PROBE, HALF_OPEN, 100.0),   # the probe was never heard of
], ids=["closed", "closed with failures", "open", "open long enough", "probe out", "probe lost"])
def test_where_a_new_turn_goes(breaker, now, decision, state, since):
    got, after = admit(breaker, now, cooldown=30)
    assert (got, after.state, after.since) == (decision, state, since)


@pytest.mark.parametrize("breaker, delivered, state, failures, since", [
    (Breaker(CLOSED, 3, 0.0), True, CLOSED, 0, 0.0),
    (Breaker(CLOSED, 3, 0.0), False, CLOSED, 4, 0.0),
    (Breaker(CLOSED, 4, 0.0), False, OPEN, 5, 100.0),             # the 5th failure in a row opens it
    (Breaker(OPEN, 5, 90.0), False, OPEN, 6, 90.0),               # old retries do not extend the cool-down
    (Breaker(OPEN, 5, 90.0), True, CLOSED, 0, 0.0),               # any delivery through closes it
    (Breaker(HALF_OPEN, 5, 99.0), False, OPEN, 6, 100.0),          # the probe failed: open again
    (Breaker(HALF_OPEN, 5, 99.0), True, CLOSED, 0, 0.0),           # the probe got through
], ids=["success", "failure", "threshold", "open fails", "open succeeds", "probe fails", "probe succeeds"])
def test_the_breaker_after_a_delivery(breaker, delivered, state, failures, since):
    after = after_delivery(breaker, delivered, now=100.0, threshold=5)
    assert (after.state, after.failures, after.since) == (state, failures, since)


def test_bot_fallback_must_be_builtin_or_agents():
    with pytest.raises(ConfigError, match="BOT_FALLBACK must be one of builtin, agents"):
        load_settings({"BOT_FALLBACK": "nobody", "WHATSAPP_APP_SECRET": "x"}, environ={})
    with pytest.raises(ConfigError, match="BOT_REPLY_TIMEOUT must be positive"):
        load_settings({"BOT_REPLY_TIMEOUT": "0", "WHATSAPP_APP_SECRET": "x"}, environ={})


# -- stories ----------------------------------------------------------------------------------------

@pytest.fixture
def make_bot(make_desk, n8n):
    """A test app whose AI branch is the fake n8n's `bot` webhook."""
    def make(**settings):
        return make_desk(N8N_BOT_URL=n8n.url_for("bot"), **settings)
    return make


@pytest.fixture
def bot(make_bot):
    return make_bot()


def turn_for(app, n8n, text: str, wa_id: str = "15550001111") -> dict:
    customer_says(app, text, wa_id=wa_id)
    settle(app)
    return [e["json"] for e in n8n.received("bot.turn")][-1]


def deadline_passes(app, turn_id: str) -> dict:
    """BOT_REPLY_TIMEOUT passes for the turn; the cron's timers run."""
    BotTurn.update(deadline_at=utcnow() - timedelta(seconds=1)).where(
        (BotTurn.id == turn_id) & BotTurn.deadline_at.is_null(False)).execute()
    outcome = timers.handoff_timers()
    settle(app)
    return outcome


def reasons(conversation_id: str) -> list[str]:
    return [reason for _, _, reason in trail(conversation_id)]


def metrics(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def test_an_unanswered_turn_is_closed_and_the_customer_gets_the_fallback_notice(bot, n8n, bot_token):
    turn = turn_for(bot, n8n, "where is my order?")
    row = BotTurn.get_by_id(turn["turn_id"])
    assert abs((row.deadline_at - row.created_at).total_seconds() - 30) < 1     # BOT_REPLY_TIMEOUT
    assert timers.handoff_timers()["bot_timeouts"] == 0                        # not due yet

    assert deadline_passes(bot, turn["turn_id"])["bot_timeouts"] == 1
    row = BotTurn.get_by_id(turn["turn_id"])
    assert (row.outcome, row.deadline_at, row.answered_at) == ("timeout", None, None)
    assert row.closed_at is not None
    conv = Conversation.get_by_id(turn["conversation"]["id"])
    assert (conv.state, conv.bot_failures) == ("BOT_CONTROLLED", 1)
    assert outbox_texts() == [bot.extensions["baton"].settings.BOT_FALLBACK_NOTICE]
    assert outbox_texts()[0].startswith(FALLBACK_TEXT)
    assert reasons(conv.id)[-2:] == ["bot_timeout", "bot_fallback_notice"]
    timeout = [e for e in audit_events(conv.id) if e.reason == "bot_timeout"][0]
    assert timeout.details["turn_id"] == turn["turn_id"] and timeout.details["failures"] == 1

    # The reply that comes after the deadline is refused, and nothing of it is kept or sent.
    late = bot_replies(bot, bot_token, turn, text="Your order ships tomorrow")
    assert late.status_code == 409 and late.json["error"] == "stale_turn"
    assert late.json["details"] == {"turn_id": turn["turn_id"], "closed": "timeout"}
    settle(bot)
    assert not Message.select().where(Message.text == "Your order ships tomorrow").exists()
    assert Conversation.get_by_id(conv.id).bot_failures == 1
    text = metrics(bot)
    assert 'baton_bot_turn_failures_total{kind="timeout"} 1.0' in text
    assert 'baton_bot_fallback_notices_total{outcome="queued"} 1.0' in text


def test_the_fallback_notice_is_sent_once_even_when_the_timer_fires_twice(bot, n8n):
    turn = turn_for(bot, n8n, "hello?")
    assert deadline_passes(bot, turn["turn_id"])["bot_timeouts"] == 1
    assert timers.handoff_timers()["bot_timeouts"] == 0
    assert bot_failures.turn_timed_out(bot.extensions["baton"].changes, turn["turn_id"]) is False
    settle(bot)
    assert outbox_texts() == [bot.extensions["baton"].settings.BOT_FALLBACK_NOTICE]
    assert reasons(turn["conversation"]["id"]).count("bot_timeout") == 1
    assert conversation_of().bot_failures == 1


def test_two_ticks_racing_on_one_deadline_fail_the_turn_once(bot, n8n):
    """Both ticks read the turn while it was open; the one that commits second loses its
    compare-and-set, plans again from a fresh read and finds the turn closed."""
    rt = bot.extensions["baton"]
    turn = turn_for(bot, n8n, "hello?")
    BotTurn.update(deadline_at=utcnow() - timedelta(seconds=1)).where(BotTurn.id == turn["turn_id"]).execute()
    attempts = []

    def slow_tick(change):
        stale = BotTurn.get_by_id(turn["turn_id"])
        if not attempts:      # the other tick commits between our read and our commit
            assert bot_failures.turn_timed_out(rt.changes, turn["turn_id"]) is True
        attempts.append(stale.closed_at)
        return bot_failures.plan_turn_failure(change, stale, "timeout", {})

    assert rt.changes.run(turn["conversation"]["id"], slow_tick) is False
    assert attempts[0] is None and attempts[1] is not None       # planned again, saw it closed
    settle(bot)
    assert outbox_texts() == [rt.settings.BOT_FALLBACK_NOTICE]
    assert conversation_of().bot_failures == 1


def test_a_reply_in_time_clears_the_deadline_and_resets_the_failures(bot, n8n, bot_token):
    first = turn_for(bot, n8n, "hi")
    deadline_passes(bot, first["turn_id"])
    assert conversation_of().bot_failures == 1
    second = turn_for(bot, n8n, "are you there?")
    assert bot_replies(bot, bot_token, second, text="Yes! How can I help?").status_code == 202
    row = BotTurn.get_by_id(second["turn_id"])
    assert row.deadline_at is None and row.answered_at is not None and row.closed_at is None
    assert bot_failures.due_turns(utcnow() + timedelta(days=1)) == []
    assert conversation_of().bot_failures == 0
    # A bot may still answer its open turn with a second message.
    assert bot_replies(bot, bot_token, second, text="We open at 9.").status_code == 202


def test_an_answer_to_a_later_turn_answers_the_earlier_ones_too(bot, n8n, bot_token):
    """The customer wrote twice and the AI branch answered the latest: no fallback notice
    follows that answer; a turn issued after the answer keeps its deadline."""
    first = turn_for(bot, n8n, "hi")
    second = turn_for(bot, n8n, "where is my order?")
    third_wa = turn_for(bot, n8n, "hello", wa_id="15550002222")      # another customer's turn
    assert bot_replies(bot, bot_token, second, text="It ships today.").status_code == 202
    third = turn_for(bot, n8n, "thanks! and the invoice?")
    assert BotTurn.get_by_id(first["turn_id"]).deadline_at is None
    assert BotTurn.get_by_id(third_wa["turn_id"]).deadline_at is not None
    assert set(bot_failures.due_turns(utcnow() + timedelta(days=1))) == {third_wa["turn_id"], third["turn_id"]}
    assert deadline_passes(bot, first["turn_id"])["bot_timeouts"] == 0
    assert bot_replies(bot, bot_token, first, text="Hi!").status_code == 202       # still open to its reply
    assert deadline_passes(bot, third["turn_id"])["bot_timeouts"] == 1
    assert outbox_texts("15550001111") == ["It ships today.", "Hi!", bot.extensions["baton"].settings.BOT_FALLBACK_NOTICE]


def test_failures_of_every_kind_in_a_row_hand_the_customer_to_a_person(make_bot, n8n, bot_token):
    app = make_bot(BOT_FAILURE_LIMIT=3)
    rt = app.extensions["baton"]
    first = turn_for(app, n8n, "blorp")
    deadline_passes(app, first["turn_id"])                                     # 1: a timeout
    second = turn_for(app, n8n, "blorp blorp")
    assert bot_replies(app, bot_token, second, text="Sorry, I didn't get that.",
                       intent="fallback").json["status"] == "queued"           # 2: a fallback answer
    third = turn_for(app, n8n, "blorp blorp blorp")
    assert deadline_passes(app, third["turn_id"])["bot_timeouts"] == 1        # 3: a timeout again
    conv = conversation_of()
    assert (conv.state, conv.escalation_reason, conv.bot_failures) == ("PENDING_AGENT", "bot_failures", 3)
    assert outbox_texts() == [rt.settings.BOT_FALLBACK_NOTICE, "Sorry, I didn't get that.",
                              rt.settings.BOT_FALLBACK_NOTICE, rt.settings.HANDOFF_NOTICE]
    assert ("BOT_CONTROLLED", "PENDING_AGENT", "bot_failures") in trail(conv.id)
    [requested] = n8n.received("handoff.requested")
    assert requested["json"]["reason"] == "bot_failures"
    text = metrics(app)
    assert "baton_bot_failure_escalations_total 1.0" in text
    assert 'baton_bot_turn_failures_total{kind="fallback"} 1.0' in text
    assert 'baton_bot_turn_failures_total{kind="timeout"} 2.0' in text


def test_a_good_answer_between_failures_starts_the_count_again(make_bot, n8n, bot_token):
    app = make_bot(BOT_FAILURE_LIMIT=2)
    deadline_passes(app, turn_for(app, n8n, "one")["turn_id"])
    assert bot_replies(app, bot_token, turn_for(app, n8n, "two"), text="Sure.", intent="order_status").status_code \
        == 202
    deadline_passes(app, turn_for(app, n8n, "three")["turn_id"])
    conv = conversation_of()
    assert (conv.state, conv.bot_failures) == ("BOT_CONTROLLED", 1)


def test_a_person_claiming_the_conversation_cancels_the_deadline(bot, n8n, bot_token):
    team = Team(bot)
    team.add("sue", role="supervisor")
    turn = turn_for(bot, n8n, "my order is late")
    assert team.act("sue", "claim", turn["conversation"]["id"]).status_code == 200
    assert deadline_passes(bot, turn["turn_id"])["bot_timeouts"] == 0
    row = BotTurn.get_by_id(turn["turn_id"])
    assert (row.outcome, row.deadline_at) == ("superseded", None)
    conv = conversation_of()
    assert (conv.state, conv.bot_failures) == ("AGENT_CONTROLLED", 0)
    assert bot.extensions["baton"].settings.BOT_FALLBACK_NOTICE not in outbox_texts()
    assert "bot_timeout" not in reasons(conv.id)
    assert "baton_bot_deadlines_cancelled_total 1.0" in metrics(bot)
    late = bot_replies(bot, bot_token, turn, text="Let me check")
    assert (late.status_code, late.json["details"]) == (409, {"turn_id": turn["turn_id"]})


def test_a_person_typing_holds_the_fallback_notice_until_their_lock_expires(bot, n8n):
    rt = bot.extensions["baton"]
    team = Team(bot)
    team.add("sue", role="supervisor")
    turn = turn_for(bot, n8n, "my order is late")
    assert team.act("sue", "typing", turn["conversation"]["id"], {"typing": True}).status_code == 204
    assert deadline_passes(bot, turn["turn_id"])["bot_timeouts"] == 0
    assert BotTurn.get_by_id(turn["turn_id"]).deadline_at is not None         # it waits for her
    assert rt.settings.BOT_FALLBACK_NOTICE not in outbox_texts()
    # Sue never sent anything and her typing lock expired: the customer is not left in silence.
    Conversation.update(typing_until=utcnow() - timedelta(seconds=1)).execute()
    assert timers.handoff_timers()["bot_timeouts"] == 1
    settle(bot)
    assert outbox_texts() == [rt.settings.BOT_FALLBACK_NOTICE]


def test_a_fallback_notice_not_yet_sent_when_a_person_claims_is_cancelled(bot, n8n):
    """The deadline failed the turn and queued the notice; a supervisor claims before the
    outbound lane sends it: the notice spoke for the bot, so it never goes out."""
    rt = bot.extensions["baton"]
    team = Team(bot)
    team.add("sue", role="supervisor")
    turn = turn_for(bot, n8n, "hello")
    BotTurn.update(deadline_at=utcnow() - timedelta(seconds=1)).where(BotTurn.id == turn["turn_id"]).execute()
    assert timers.handoff_timers()["bot_timeouts"] == 1          # committed; the lane has not sent it yet
    assert team.act("sue", "claim", turn["conversation"]["id"]).status_code == 200
    settle(bot)
    notice = Message.get(Message.text == rt.settings.BOT_FALLBACK_NOTICE)
    assert notice.status == "failed" and notice.error_title.startswith("cancelled")
    assert rt.settings.BOT_FALLBACK_NOTICE not in outbox_texts()


def test_outside_the_service_window_without_a_template_the_notice_is_not_sent(bot, n8n):
    turn = turn_for(bot, n8n, "hello")
    Conversation.update(last_inbound_at=utcnow() - timedelta(hours=25)).execute()
    deadline_passes(bot, turn["turn_id"])
    assert outbox_texts() == []
    conv = conversation_of()
    assert conv.bot_failures == 1
    [not_sent] = [e for e in audit_events(conv.id) if e.reason == "notice_not_sent"]
    assert not_sent.details["notice"] == "BOT_FALLBACK_NOTICE"
    assert not_sent.details["template_setting"] == "BOT_FALLBACK_NOTICE_TEMPLATE"
    assert 'baton_bot_fallback_notices_total{outcome="not_sent"} 1.0' in metrics(bot)


def test_a_bot_turn_whose_delivery_failed_for_good_counts_as_a_failure(make_bot, n8n, fast_retries, bot_token):
    app = make_bot(EVENT_MAX_ATTEMPTS=2)
    rt = app.extensions["baton"]
    n8n.fail("bot")
    customer_says(app, "hello")
    settle(app)
    [delivery] = Delivery.select().where(Delivery.event_type == "bot.turn")
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    [turn] = BotTurn.select()
    assert turn.outcome == "delivery_failed" and turn.deadline_at is None
    conv = conversation_of()
    assert conv.bot_failures == 1
    assert outbox_texts() == [rt.settings.BOT_FALLBACK_NOTICE]
    [failed] = [e for e in audit_events(conv.id) if e.reason == "bot_delivery_failed"]
    assert failed.details["delivery_id"] == delivery.id and failed.details["attempts"] == 2
    # Its deadline passing later changes nothing: once per turn.
    assert timers.handoff_timers()["bot_timeouts"] == 0
    assert bot_failures.fail_turn(rt.changes, turn.id, "delivery_failed") is False
    settle(app)
    assert outbox_texts() == [rt.settings.BOT_FALLBACK_NOTICE]
    assert 'baton_bot_turn_failures_total{kind="delivery_failed"} 1.0' in metrics(app)
    # A replayed delivery that reaches n8n after all gets its reply refused.
    late = bot_replies(app, bot_token, {"conversation": {"id": conv.id}, "turn_id": turn.id}, text="Hi!")
    assert (late.status_code, late.json["details"]) == (409, {"turn_id": turn.id, "closed": "delivery_failed"})


def cool_down_passes(app) -> None:
    """BOT_BREAKER_COOLDOWN passes for the open breaker (its `since` moves back)."""
    rt = app.extensions["baton"]
    breaker = rt.policy.breaker
    since = float(rt.redis.hget(breaker.key, "since"))
    rt.redis.hset(breaker.key, "since", repr(since - breaker.cooldown - 1))


BREAKER = {"BOT_BREAKER_FAILURES": 2, "EVENT_MAX_ATTEMPTS": 1, "BOT_FAILURE_LIMIT": 100}


def test_the_breaker_opens_sends_new_turns_to_the_builtin_bot_and_a_probe_closes_it(make_bot, n8n):
    app = make_bot(**BREAKER)
    rt = app.extensions["baton"]
    n8n.fail("bot")
    for wa_id in ("15550000001", "15550000002"):
        customer_says(app, "hello", wa_id=wa_id)
        settle(app)
    assert rt.policy.breaker.read().state == OPEN
    assert "bot_breaker_opened" in reasons(conversation_of("15550000002").id)
    assert len(n8n.refused) == 2

    # Open: the next customer is answered by the built-in bot, and n8n is not asked.
    customer_says(app, "hi", wa_id="15550000003")
    settle(app)
    assert len(n8n.refused) == 2
    rerouted = conversation_of("15550000003")
    assert outbox_texts("15550000003")[0].startswith("Hi! 👋")
    [turn] = BotTurn.select().where(BotTurn.conversation == rerouted.id)
    assert turn.answered_at is not None and turn.deadline_at is None
    [event] = [e for e in audit_events(rerouted.id) if e.reason == "bot_turn_rerouted"]
    assert event.details["to"] == "builtin" and event.details["breaker"] == "open"
    text = metrics(app)
    assert 'baton_bot_breaker_state{state="open"} 1.0' in text
    assert 'baton_bot_turns_rerouted_total{to="builtin"} 1.0' in text
    assert 'baton_bot_breaker_transitions_total{to="open"} 1.0' in text

    # The cool-down passes while n8n is still down: the probe fails, the breaker opens again.
    cool_down_passes(app)
    customer_says(app, "hello?", wa_id="15550000004")
    settle(app)
    assert len(n8n.refused) == 3 and rt.policy.breaker.read().state == OPEN
    assert reasons(conversation_of("15550000004").id).count("bot_breaker_half_open") == 1
    assert "bot_breaker_opened" in reasons(conversation_of("15550000004").id)

    # n8n is back: the next probe gets through and closes it; turns go to n8n again.
    n8n.recover("bot")
    cool_down_passes(app)
    customer_says(app, "hello again", wa_id="15550000005")
    settle(app)
    assert rt.policy.breaker.read() == Breaker()
    probed = conversation_of("15550000005").id
    assert [r for r in reasons(probed) if r.startswith("bot_breaker")] == ["bot_breaker_half_open",
                                                                          "bot_breaker_closed"]
    assert [e["json"]["message"]["text"] for e in n8n.received("bot.turn")] == ["hello again"]
    customer_says(app, "and again", wa_id="15550000006")
    settle(app)
    assert [e["json"]["message"]["text"] for e in n8n.received("bot.turn")] == ["hello again", "and again"]
    text = metrics(app)
    assert 'baton_bot_breaker_state{state="closed"} 1.0' in text
    assert 'baton_bot_breaker_transitions_total{to="half_open"} 2.0' in text
    assert 'baton_bot_breaker_transitions_total{to="open"} 2.0' in text
    assert 'baton_bot_breaker_transitions_total{to="closed"} 1.0' in text


def test_while_a_probe_is_out_new_turns_keep_going_to_the_fallback(make_bot, n8n):
    app = make_bot(**BREAKER)
    rt = app.extensions["baton"]
    n8n.fail("bot")
    for wa_id in ("15550000001", "15550000002"):
        customer_says(app, "hello", wa_id=wa_id)
        settle(app)
    cool_down_passes(app)
    decision, breaker = rt.policy.breaker.admit(time.time())    # another process took the probe
    assert (decision, breaker.state) == (PROBE, HALF_OPEN)
    customer_says(app, "hi", wa_id="15550000003")
    settle(app)
    assert len(n8n.refused) == 2
    assert "bot_turn_rerouted" in reasons(conversation_of("15550000003").id)


def test_with_bot_fallback_agents_an_open_breaker_sends_customers_to_the_humans(make_bot, n8n):
    app = make_bot(BOT_FALLBACK="agents", **BREAKER)
    rt = app.extensions["baton"]
    n8n.fail("bot")
    for wa_id in ("15550000001", "15550000002"):
        customer_says(app, "hello", wa_id=wa_id)
        settle(app)
    customer_says(app, "hi, I need help", wa_id="15550000003")
    settle(app)
    conv = conversation_of("15550000003")
    assert (conv.state, conv.escalation_reason) == ("PENDING_AGENT", "bot_unavailable")
    assert BotTurn.select().where(BotTurn.conversation == conv.id).count() == 0
    assert Message.get(Message.text == "hi, I need help").routed_to == "queued_for_agent"
    assert outbox_texts("15550000003") == [rt.settings.HANDOFF_NOTICE]
    assert reasons(conv.id)[-2:] == ["bot_turn_rerouted", "bot_unavailable"]
    assert [e["json"]["reason"] for e in n8n.received("handoff.requested")] == ["bot_unavailable"]
    assert 'baton_bot_turns_rerouted_total{to="agents"} 1.0' in metrics(app)


def test_a_probe_taken_by_a_change_that_did_not_commit_is_given_back(make_bot, n8n, monkeypatch):
    app = make_bot(**BREAKER)
    rt = app.extensions["baton"]
    n8n.fail("bot")
    for wa_id in ("15550000001", "15550000002"):
        customer_says(app, "hello", wa_id=wa_id)
        settle(app)
    cool_down_passes(app)
    n8n.recover("bot")
    # The conversation changes under the first attempt to route the message: it is planned again.
    from routing import inbound

    real = inbound.decide
    calls = []

    def racing_decide(*args, **kwargs):
        if not calls:
            calls.append(1)
            Conversation.update(version=Conversation.version + 1).execute()
        return real(*args, **kwargs)
    monkeypatch.setattr(inbound, "decide", racing_decide)
    customer_says(app, "hello?", wa_id="15550000003")
    settle(app)
    assert calls and rt.policy.breaker.read() == Breaker()
    assert [e["json"]["message"]["text"] for e in n8n.received("bot.turn")] == ["hello?"]
    assert OutboxEntry.select().count() == 2        # the two fallback notices of the first customers


def test_the_builtin_bot_is_unchanged_without_n8n(desk):
    customer_says(desk, "hi")
    settle(desk)
    [turn] = BotTurn.select()
    assert turn.deadline_at is None and turn.answered_at is not None
    assert timers.handoff_timers()["bot_timeouts"] == 0
    assert outbox_texts()[0].startswith("Hi! 👋")


def test_a_turn_moved_by_a_merge_while_its_deadline_fires_is_failed_in_its_new_conversation(bot, n8n, monkeypatch):
    """Two conversations of one person are merged (routing.identity moves the bot turns)
    between the timer finding the turn and failing it: nothing fails now, and the next
    tick fails the turn where it lives."""
    rt = bot.extensions["baton"]
    turn = turn_for(bot, n8n, "hello")
    other = turn_for(bot, n8n, "hi", wa_id="15550002222")["conversation"]["id"]
    BotTurn.update(deadline_at=utcnow() - timedelta(seconds=1)).where(BotTurn.id == turn["turn_id"]).execute()
    BotTurn.update(deadline_at=None).where(BotTurn.conversation == other).execute()
    real_run = rt.changes.run

    def merged_meanwhile(conversation_id, plan):
        BotTurn.update(conversation=other).where(BotTurn.id == turn["turn_id"]).execute()
        monkeypatch.setattr(rt.changes, "run", real_run)
        return real_run(conversation_id, plan)
    monkeypatch.setattr(rt.changes, "run", merged_meanwhile)
    assert bot_failures.turn_timed_out(rt.changes, turn["turn_id"]) is False
    assert BotTurn.get_by_id(turn["turn_id"]).closed_at is None
    assert timers.handoff_timers()["bot_timeouts"] == 1
    settle(bot)
    assert Conversation.get_by_id(other).bot_failures == 1
    assert outbox_texts("15550002222") == [rt.settings.BOT_FALLBACK_NOTICE]


def test_metrics_show_a_closed_breaker_and_no_outcomes_yet(bot):
    text = metrics(bot)
    assert 'baton_bot_breaker_state{state="closed"} 1.0' in text
    assert 'baton_bot_breaker_state{state="open"} 0.0' in text
    assert "baton_bot_breaker_failures 0.0" in text
    assert "baton_bot_failure_escalations_total 0.0" in text
    assert 'baton_bot_turns_rerouted_total{to="agents"} 0.0' in text


def test_a_breaker_whose_redis_cannot_be_reached_lets_turns_go_to_the_ai_branch():
    from redis import Redis

    from routing.bot_breaker import BotBreaker

    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    decision, breaker = BotBreaker(unreachable, "bt", threshold=5, cooldown=30).admit(time.time())
    assert (decision, breaker) == (DELIVER, Breaker())
