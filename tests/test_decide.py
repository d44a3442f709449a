"""The routing decision as a table: state × message → who gets it, and what changes."""
from datetime import datetime, timedelta

import pytest

from routing.decide import (ConversationView, InboundView, Policy, bot_may_speak, decide,
                            decide_escalation)
from routing.escalation import load_phrases

NOW = datetime(2026, 11, 22, 12, 0, 0)
POLICY = Policy(phrases=load_phrases(None), pending_notice_interval=timedelta(minutes=10))
HUMAN = InboundView("text", "I want to talk to a human")
HELLO = InboundView("text", "hello there")
ECHO = InboundView("text", "Hi, Ana here from the shop", from_me=True)

BOT = "BOT_CONTROLLED"
PENDING = "PENDING_AGENT"
AGENT = "AGENT_CONTROLLED"
CLOSED = "CLOSED"

# state, cooldown, last pending notice (minutes ago), message → new state, routed_to, reason, notices, bot turn, notify
TABLE = [
    ("bot answers an ordinary message", BOT, 0, None, HELLO, BOT, "bot", "inbound", (False, False), True, ()),
    ("explicit request hands off", BOT, 0, None, HUMAN, PENDING, "queued_for_agent", "explicit_request",
     (True, False), False, ("handoff.requested",)),
    ("explicit request during cooldown stays with the bot", BOT, 2, None, HUMAN, BOT, "bot", "inbound",
     (False, False), True, ()),
    ("a closed conversation reopens with the bot", CLOSED, 0, None, HELLO, BOT, "bot", "reopened",
     (False, False), True, ()),
    ("a closed conversation reopened by a human request goes to the queue", CLOSED, 0, None, HUMAN, PENDING,
     "queued_for_agent", "explicit_request", (True, False), False, ("handoff.requested",)),
    ("pending: queued for agents with a first pending notice", PENDING, 0, None, HELLO, PENDING,
     "queued_for_agent", "inbound", (False, True), False, ("message.for_agent",)),
    ("pending: no second notice within the interval", PENDING, 0, 3, HELLO, PENDING, "queued_for_agent",
     "inbound", (False, False), False, ("message.for_agent",)),
    ("pending: notice again after the interval", PENDING, 0, 11, HELLO, PENDING, "queued_for_agent",
     "inbound", (False, True), False, ("message.for_agent",)),
    ("pending: asking again for a human changes nothing", PENDING, 0, 3, HUMAN, PENDING, "queued_for_agent",
     "inbound", (False, False), False, ("message.for_agent",)),
    ("agent: delivered to the agent, never the bot", AGENT, 0, None, HUMAN, AGENT, "agent", "inbound",
     (False, False), False, ("message.for_agent",)),
    ("a reaction is not the bot's business", BOT, 0, None, InboundView("reaction", "👍"), BOT, "none", "inbound",
     (False, False), False, ()),
    ("unsupported content is not sent to the bot", BOT, 0, None, InboundView("unsupported"), BOT, "none",
     "inbound", (False, False), False, ()),
    ("an image goes to the bot", BOT, 0, None, InboundView("image", "look"), BOT, "bot", "inbound",
     (False, False), True, ()),
    ("a human replying from the business phone silences the bot", BOT, 0, None, ECHO, AGENT, "none",
     "agent_takeover", (False, False), False, ("handoff.accepted",)),
    ("an echo while pending takes over too", PENDING, 0, None, ECHO, AGENT, "none", "agent_takeover",
     (False, False), False, ("handoff.accepted",)),
    ("an echo while an agent holds it changes nothing", AGENT, 0, None, ECHO, AGENT, "none", "human_echo",
     (False, False), False, ()),
]


@pytest.mark.parametrize("story, state, cooldown, notice_ago, msg, new_state, routed_to, reason, notices, "
                         "bot_turn, notify", TABLE, ids=[row[0] for row in TABLE])
def test_decide(story, state, cooldown, notice_ago, msg, new_state, routed_to, reason, notices, bot_turn, notify):
    last_notice = None if notice_ago is None else NOW - timedelta(minutes=notice_ago)
    conv = ConversationView(state=state, cooldown_remaining=cooldown, last_pending_notice_at=last_notice)
    decision = decide(conv, msg, POLICY, NOW)
    assert (decision.new_state, decision.routed_to, decision.reason) == (new_state, routed_to, reason)
    assert (decision.send_handoff_notice, decision.send_pending_notice) == notices
    assert decision.bot_turn is bot_turn
    assert decision.notify == notify


def test_each_customer_message_in_cooldown_uses_up_one_interaction():
    decision = decide(ConversationView(BOT, cooldown_remaining=2), HELLO, POLICY, NOW)
    assert decision.cooldown_remaining == 1


def test_a_reopened_conversation_starts_without_cooldown():
    decision = decide(ConversationView(CLOSED, cooldown_remaining=3), HUMAN, POLICY, NOW)
    assert decision.new_state == PENDING


ESCALATIONS = [
    ("bot conversation escalates", BOT, 0, False, True, PENDING),
    ("closed conversation escalates", CLOSED, 0, False, True, PENDING),
    ("already pending: unchanged", PENDING, 0, False, False, PENDING),
    ("agent holds it: unchanged", AGENT, 0, False, False, AGENT),
    ("explicit API call ignores cooldown", BOT, 3, False, True, PENDING),
    ("automatic trigger respects cooldown", BOT, 3, True, False, BOT),
]


@pytest.mark.parametrize("story, state, cooldown, automatic, changed, new_state", ESCALATIONS,
                         ids=[row[0] for row in ESCALATIONS])
def test_decide_escalation(story, state, cooldown, automatic, changed, new_state):
    verdict = decide_escalation(ConversationView(state, cooldown_remaining=cooldown), automatic=automatic)
    assert (verdict.changed, verdict.new_state) == (changed, new_state)
    assert verdict.send_handoff_notice is changed


@pytest.mark.parametrize("state, epoch, turn_epoch, allowed", [
    (BOT, 4, 4, True), (BOT, 5, 4, False), (PENDING, 4, 4, False), (AGENT, 4, 4, False), (CLOSED, 4, 4, False)])
def test_bot_may_speak_only_while_it_still_holds_the_turns_control(state, epoch, turn_epoch, allowed):
    assert bot_may_speak(state, epoch, turn_epoch) is allowed


ANGRY = InboundView("text", "this is the worst service ever", sentiment_urgency=0.82)

# view, message → new state, routed_to, reason, urgency, bot turn
HOLDS_AND_SENTIMENT = [
    ("an agent typing on a bot conversation holds the message", ConversationView(BOT, typing_held=True), HELLO,
     BOT, "held", "held", None, False),
    ("a held conversation holds even a request for a human (the human is coming)",
     ConversationView(BOT, typing_held=True), HUMAN, BOT, "held", "held", None, False),
    ("holding still uses up the cooldown", ConversationView(BOT, cooldown_remaining=2, typing_held=True), HELLO,
     BOT, "held", "held", None, False),
    ("an angry customer is handed to a human with urgency", ConversationView(BOT), ANGRY, PENDING,
     "queued_for_agent", "sentiment", 0.82, False),
    ("anger during cooldown stays with the bot", ConversationView(BOT, cooldown_remaining=1), ANGRY, BOT, "bot",
     "inbound", None, True),
    ("an explicit request wins over sentiment", ConversationView(BOT),
     InboundView("text", "I want to talk to a human", sentiment_urgency=0.9), PENDING, "queued_for_agent",
     "explicit_request", None, False),
    ("anger while pending is just queued", ConversationView(PENDING, last_pending_notice_at=NOW), ANGRY, PENDING,
     "queued_for_agent", "inbound", None, False),
    ("an echo beats a typing hold", ConversationView(BOT, typing_held=True), ECHO, AGENT, "none",
     "agent_takeover", None, False),
]


@pytest.mark.parametrize("story, view, msg, new_state, routed_to, reason, urgency, bot_turn", HOLDS_AND_SENTIMENT,
                         ids=[row[0] for row in HOLDS_AND_SENTIMENT])
def test_typing_holds_and_sentiment(story, view, msg, new_state, routed_to, reason, urgency, bot_turn):
    decision = decide(view, msg, POLICY, NOW)
    assert (decision.new_state, decision.routed_to, decision.reason) == (new_state, routed_to, reason)
    assert (decision.escalation.urgency if decision.escalation else None) == urgency
    assert decision.bot_turn is bot_turn


# -- the complete change: columns, held messages, seats, offers and audit entries -------------

SENT = NOW - timedelta(seconds=5)
LATER = InboundView("text", "hello there", sent_at=SENT)


def test_an_ordinary_message_records_activity_and_the_service_window():
    d = decide(ConversationView(BOT, control_epoch=4), LATER, POLICY, NOW)
    assert d.columns == {"cooldown_remaining": 0, "last_activity_at": NOW, "last_inbound_at": SENT}
    assert (d.audits, d.offer, d.free_seat_of, d.held_messages_to) == ((), False, None, None)


def test_an_older_message_does_not_move_the_service_window_back():
    d = decide(ConversationView(BOT, last_inbound_at=NOW), LATER, POLICY, NOW)
    assert "last_inbound_at" not in d.columns


def test_an_escalation_moves_control_and_fills_every_handoff_column():
    d = decide(ConversationView(BOT, control_epoch=4, group="vip"), InboundView("text", HUMAN.text, sent_at=SENT),
               POLICY, NOW)
    assert d.columns["state"] == PENDING and d.columns["control_epoch"] == 5
    assert {k: d.columns[k] for k in ("escalation_reason", "pending_since", "last_pending_notice_at", "group",
                                       "offered_agent_id", "assigned_agent_id", "offers_lapsed")} == {
        "escalation_reason": "explicit_request", "pending_since": NOW, "last_pending_notice_at": NOW,
        "group": POLICY.default_group, "offered_agent_id": None, "assigned_agent_id": None, "offers_lapsed": []}
    assert d.offer and d.audits == ((BOT, PENDING, "explicit_request"),)


def test_reopening_clears_the_old_handoff_and_is_audited_twice_when_it_escalates():
    d = decide(ConversationView(CLOSED, control_epoch=2), HUMAN, POLICY, NOW)
    assert d.audits == ((CLOSED, BOT, "reopened"), (BOT, PENDING, "explicit_request"))
    d = decide(ConversationView(CLOSED, control_epoch=2), HELLO, POLICY, NOW)
    assert d.audits == ((CLOSED, BOT, "reopened"),)
    assert d.columns["state"] == BOT and d.columns["bot_failures"] == 0 and d.columns["held_since"] is None


def test_a_takeover_while_offered_frees_the_offered_seat_and_takes_the_held_messages():
    view = ConversationView(PENDING, offered_agent_id="a_1", held_since=NOW, control_epoch=7)
    d = decide(view, ECHO, POLICY, NOW)
    assert (d.free_seat_of, d.held_messages_to) == ("a_1", "agent")
    assert d.columns["state"] == AGENT and d.columns["offered_agent_id"] is None
    assert d.columns["held_since"] is None and "last_inbound_at" not in d.columns   # an echo is not the customer


def test_the_assigned_agent_owes_an_answer_from_the_first_unanswered_message():
    d = decide(ConversationView(AGENT, assigned_agent_id="a_1"), LATER, POLICY, NOW)
    assert d.columns["awaiting_agent_since"] == NOW
    d = decide(ConversationView(AGENT, assigned_agent_id="a_1", awaiting_agent_since=SENT), LATER, POLICY, NOW)
    assert "awaiting_agent_since" not in d.columns


@pytest.mark.parametrize("story, view, msg, applies", [
    ("readable customer text while the bot holds it", ConversationView(BOT), HELLO, True),
    ("a closed conversation (it reopens with the bot)", ConversationView(CLOSED), HELLO, True),
    ("not during the release cooldown", ConversationView(BOT, cooldown_remaining=1), HELLO, False),
    ("not during a typing hold", ConversationView(BOT, typing_held=True), HELLO, False),
    ("not while humans have it", ConversationView(PENDING), HELLO, False),
    ("not for an echo from the business phone", ConversationView(BOT), ECHO, False),
    ("not for a picture", ConversationView(BOT), InboundView("image", "caption"), False),
    ("not for empty text", ConversationView(BOT), InboundView("text", ""), False),
])
def test_the_sentiment_gate(story, view, msg, applies):
    from routing.decide import sentiment_applies

    assert sentiment_applies(view, msg.type, msg.text, msg.from_me) is applies
    angry = InboundView(msg.type, msg.text, msg.from_me, sentiment_urgency=0.9)
    escalated = decide(view, angry, POLICY, NOW).reason == "sentiment"
    assert escalated is applies


def test_the_analyser_is_not_asked_when_the_customer_asks_for_a_human_in_words():
    from routing.decide import needs_sentiment

    policy = Policy(phrases=POLICY.phrases, sentiment=object())
    assert needs_sentiment(ConversationView(BOT), "text", HELLO.text, False, policy)
    assert not needs_sentiment(ConversationView(BOT), "text", HUMAN.text, False, policy)
    assert not needs_sentiment(ConversationView(BOT), "text", HELLO.text, False, POLICY)   # sentiment off
