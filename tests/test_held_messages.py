"""Messages held for a typing agent go somewhere defined on every path.

While an agent types on a conversation the bot holds, the customer's messages
are held for that agent (`routed_to = held`). The hold ends one of two ways:
- someone takes the conversation (the typist claims or replies, an
  escalation, a takeover from the business phone): the held messages are
  theirs (`agent`, `queued_for_agent`);
- nobody takes them (typing stopped, the hold lapsed, the conversation was
  closed, released, transferred, or merged into another): they go back to
  routing, in the customer's order, under the state the conversation is then
  in (a closed conversation reopens to the bot, which answers them).
Before, a close made them `none`: nobody's, never answered."""
from __future__ import annotations

import pytest

from models import BotTurn, Conversation, Message, utcnow
from tests.support import ASK_FOR_A_HUMAN, backdate, conversation_of, customer_says, settle, trail, waiting_customer


def held_while_sue_types(desk, team, *texts: str) -> Conversation:
    """Sue (a supervisor) types on a conversation the bot holds; the customer writes `texts`."""
    team.add("sue", role="supervisor")
    customer_says(desk, "hello")
    settle(desk)
    conv = conversation_of()
    assert team.act("sue", "typing", conv.id, {"typing": True}).status_code == 204
    for text in texts:
        customer_says(desk, text)
    settle(desk)
    assert [m.text for m in inbound(conv.id) if m.routed_to == "held"] == list(texts)
    return conv


def inbound(conversation_id: str) -> list[Message]:
    return list(Message.select().where((Message.conversation == conversation_id) & (Message.direction == "in"))
                .order_by(Message.seq))


def answered_in_order(conversation_id: str) -> bool:
    """Every message routed to the bot got its turn, in the customer's order."""
    to_bot = [m.id for m in inbound(conversation_id) if m.routed_to == "bot"]
    turns = [t.message_id for t in BotTurn.select().where(BotTurn.conversation == conversation_id)
             .order_by(BotTurn.created_at, BotTurn.id)]
    return turns == to_bot


def test_closing_a_conversation_with_held_messages_routes_them_again_and_the_bot_answers(desk, team):
    conv = held_while_sue_types(desk, team, "are you there?", "hello??")
    closed = team.act("sue", "close", conv.id)
    assert closed.status_code == 200 and closed.json["state"] == "CLOSED"
    settle(desk)
    assert [(m.text, m.routed_to) for m in inbound(conv.id)] == [
        ("hello", "bot"), ("are you there?", "bot"), ("hello??", "bot")]
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.held_since, conv.typing_agent_id) == ("BOT_CONTROLLED", None, None)
    assert answered_in_order(conv.id)
    steps = [(before, after, reason) for before, after, reason in trail(conv.id)]
    assert steps.index(("BOT_CONTROLLED", "CLOSED", "closed_by_agent")) < steps.index(
        ("CLOSED", "BOT_CONTROLLED", "reopened"))


def test_an_idle_close_with_held_messages_routes_them_again(desk, team):
    from jobs import timers

    conv = held_while_sue_types(desk, team, "still there?")
    backdate(conv.id, last_activity_at=10 ** 6)
    assert timers.sweep()["idle_closed"] == 1
    settle(desk)
    assert [m.routed_to for m in inbound(conv.id)] == ["bot", "bot"]
    assert answered_in_order(conv.id)


def test_asking_for_a_human_after_the_hold_lapsed_takes_the_held_messages_to_the_queue(desk, team):
    conv = held_while_sue_types(desk, team, "the app crashed")
    backdate(conv.id, typing_until=1)            # lapsed; the timer that ends it has not run yet
    customer_says(desk, ASK_FOR_A_HUMAN)
    settle(desk)
    assert [(m.text, m.routed_to) for m in inbound(conv.id)] == [
        ("hello", "bot"), ("the app crashed", "queued_for_agent"), (ASK_FOR_A_HUMAN, "queued_for_agent")]
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.held_since) == ("PENDING_AGENT", None)


def test_an_escalation_takes_the_held_messages_to_the_queue(desk, team, admin_token):
    from tests.support import bearer

    conv = held_while_sue_types(desk, team, "please help")
    answer = desk.test_client().post(f"/api/v1/conversations/{conv.id}/escalate", headers=bearer(admin_token),
                                     json={"reason": "vip"})
    assert answer.status_code == 200, answer.json
    assert [m.routed_to for m in inbound(conv.id)] == ["bot", "queued_for_agent"]
    assert Conversation.get_by_id(conv.id).held_since is None


def test_the_typist_replying_takes_the_held_messages(desk, team):
    conv = held_while_sue_types(desk, team, "hi?")
    assert team.act("sue", "messages", conv.id, {"text": "Sue here"}).status_code == 202
    assert [m.routed_to for m in inbound(conv.id)] == ["bot", "agent"]


@pytest.mark.parametrize("action, body, routed, state", [
    ("release", None, "bot", "BOT_CONTROLLED"),
    ("transfer", {"group": "billing"}, "queued_for_agent", "PENDING_AGENT"),
    ("close", None, "bot", "BOT_CONTROLLED"),
])
def test_a_hold_left_on_a_waiting_conversation_is_routed_again_when_it_is_released_transferred_or_closed(
        desk, team, action, body, routed, state):
    """A hold an earlier version left behind on a conversation that went on to wait for a human."""
    team.add("sue", role="supervisor")
    conv = waiting_customer(desk)
    customer_says(desk, "one more thing")
    settle(desk)
    left = Message.get(Message.text == "one more thing")
    Message.update(routed_to="held").where(Message.id == left.id).execute()
    Conversation.update(held_since=utcnow(), version=Conversation.version + 1).where(
        Conversation.id == conv.id).execute()
    answer = team.act("sue", action, conv.id, body)
    assert answer.status_code == 200, answer.json
    settle(desk)
    assert Message.get_by_id(left.id).routed_to == routed
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.held_since) == (state, None)
    assert not Message.select().where(Message.routed_to == "held").exists()
