"""Group commit for routing (routing.drain, Changes.run_group): a pump takes
several ready conversations and routes them in rounds, every conversation's
next message committed together in one write transaction. Each customer's
messages still go strictly in their order, and one customer's failure holds
up nobody else."""
from __future__ import annotations

import time

import pytest

from models import Contact, Conversation, Message
from tests.support import customer_says, settle

CUSTOMERS = [f"1555123{n:04d}" for n in range(12)]


def say_three_each(app) -> None:
    now = int(time.time())
    for wa_id in CUSTOMERS:
        for n, text in enumerate(("hello", "1", "2")):       # the built-in bot's menu, then two choices
            customer_says(app, text, wa_id=wa_id, message_id=f"wamid.{wa_id}.{n}", timestamp=now + n)


@pytest.fixture
def transactions(monkeypatch):
    """Counts the routing transactions (routing.change's commits)."""
    import routing.change as change_module

    counted = []
    real = change_module.write_transaction

    def counting():
        counted.append(1)
        return real()
    monkeypatch.setattr(change_module, "write_transaction", counting)
    monkeypatch.setattr("routing.effects.write_transaction", counting)
    return counted


def test_a_pump_routes_many_customers_in_few_transactions_and_each_in_order(app, transactions):
    say_three_each(app)
    settle(app)
    routed = Message.select().where((Message.direction == "in") & Message.routed_to.is_null(False)).count()
    assert routed == 3 * len(CUSTOMERS)
    # 36 messages, 12 conversations a round: a few rounds, not one transaction each
    # (an outbound reply's own writes are the outbound lane's, not counted here).
    assert len(transactions) <= 12, len(transactions)
    for wa_id in CUSTOMERS:
        conversation = Conversation.select().join(Contact).where(Contact.wa_id == wa_id).get()
        inbound = (Message.select().where((Message.conversation == conversation.id) & (Message.direction == "in"))
                   .order_by(Message.seq))
        assert [m.provider_message_id for m in inbound] == [f"wamid.{wa_id}.{n}" for n in range(3)]
        replies = (Message.select().where((Message.conversation == conversation.id) & (Message.direction == "out"))
                   .order_by(Message.seq))
        assert len(replies) == 3                             # the bot answered each, in the same order


def test_one_customer_whose_routing_fails_holds_up_only_themselves(app, monkeypatch):
    import routing.inbound as inbound

    broken = CUSTOMERS[3]
    real = inbound._route

    def route(change, policy, message_id):
        if change.conv.contact.wa_id == broken:
            raise RuntimeError("a bug in routing this customer")
        return real(change, policy, message_id)
    monkeypatch.setattr(inbound, "_route", route)
    say_three_each(app)
    settle(app)
    waiting = (Message.select(Contact.wa_id).join(Conversation).join(Contact)
               .where((Message.direction == "in") & Message.routed_to.is_null()).tuples())
    assert {wa_id for wa_id, in waiting} == {broken}         # everyone else was routed, in full
    monkeypatch.undo()
    rt = app.extensions["baton"]
    rt.lanes.schedule_at("inbound", Conversation.select().join(Contact).where(Contact.wa_id == broken).get().id, 0)
    settle(app)                                              # the bug is fixed: its retry routes the three
    assert not Message.select().where((Message.direction == "in") & Message.routed_to.is_null()).exists()


def test_a_rounds_after_commit_work_is_one_dispatch_keeping_each_changes_order():
    """Effects.together: the work of several committed changes in one dispatch, each
    item once where Effects keeps it once, and every change's own items in order."""
    from routing.effects import Effects

    a, b = Effects(), Effects()
    a.schedule("outbound", "c_a")
    a.live += [{"n": 1}, {"n": 2}]
    a.typing.append(("c_a", "wamid.a"))
    a.counts.append("bot_replies")
    b.schedule("outbound", "c_b")
    b.schedule("outbound", "c_a")           # the same lane key: scheduled once
    b.offer("c_b")
    b.live.append({"n": 3})
    b.counts.append("bot_replies")
    merged = Effects.together([a, b])
    assert merged.schedules == [("outbound", "c_a"), ("outbound", "c_b")]
    assert merged.live == [{"n": 1}, {"n": 2}, {"n": 3}] and merged.offers == ["c_b"]
    assert merged.typing == [("c_a", "wamid.a")] and merged.counts == ["bot_replies", "bot_replies"]
    assert a.dispatched and b.dispatched and not merged.dispatched
