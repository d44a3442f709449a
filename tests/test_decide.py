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
