"""The chaos suite's counters count: each is shown a history holding exactly the fault
it looks for (written into the database the way it would look), and a clean one."""
from __future__ import annotations

import time
from datetime import timedelta

from models import BotTurn, Conversation, Event, Message, utcnow
from models.base import epoch_seconds
from tests.chaos import checks
from tests.fakes.graph_api import Accepted
from tests.support import Team, backdate, customer_says, settle, waiting_customer

TIMERS = {"PENDING_TIMEOUT": 300, "AGENT_RESPONSE_TIMEOUT": 300}


def customer_writes(app, n: int, wa_id: str = "15556660001") -> dict[str, tuple[str, int]]:
    """`n` messages, routed to the built-in bot; the ledger's `acked` for them."""
    base = int(time.time()) - 100
    acked = {}
    for k in range(n):
        mid = f"wamid.CHECK{wa_id}{k:05d}"
        customer_says(app, f"question {k}", wa_id, message_id=mid, timestamp=base + k)
        acked[mid] = (wa_id, base + k)
    settle(app)
    return acked


def sent(reference: str | None, at: float, to: str = "15556660001", text: str = "x") -> Accepted:
    return Accepted(at=at, phone_number_id="sandbox-1", to=to, text=text, template=None,
                    reference=reference, wamid=f"wamid.{reference}{at}")


def test_a_clean_history_counts_nothing(app):
    acked = customer_writes(app, 3)
    lost, duplicated = checks.lost_and_duplicated(acked)
    assert not any(lost.values()) and not any(duplicated.values())
    assert checks.misordered() == []
    replies = Message.select().where((Message.direction == "out") & (Message.sender == "bot"))
    accepted = [sent(m.id, time.time()) for m in replies]
    assert len(accepted) == 3
    assert checks.sent_twice(accepted) == [] and checks.bot_over_human(accepted) == ([], 0)
    assert not any(checks.overdue_timers(TIMERS).values())


def test_lost_counts_an_acknowledged_message_not_stored_or_never_routed(app):
    acked = customer_writes(app, 2)
    first = sorted(acked)[0]
    Message.update(routed_to=None).where(Message.provider_message_id == first).execute()
    lost, _ = checks.lost_and_duplicated({**acked, "wamid.NEVERSTORED": ("15556660001", 1)})
    assert lost == {"not_stored": ["wamid.NEVERSTORED"], "not_routed": [first]}


def test_duplicated_counts_a_second_turn_and_a_second_answer(app):
    acked = customer_writes(app, 1)
    turn = BotTurn.get()
    BotTurn.create(conversation=turn.conversation_id, message_id=turn.message_id, control_epoch=turn.control_epoch)
    reply = Message.get((Message.direction == "out") & (Message.sender == "bot"))
    Message.insert(**{**reply.__data__, "id": "m_second_answer", "provider_message_id": None,
                      "seq": reply.seq + 100}).execute()
    _, duplicated = checks.lost_and_duplicated(acked)
    assert duplicated["routed_twice"] == [turn.message_id] and duplicated["answered_twice"] == [turn.id]


def test_misordered_counts_a_later_message_routed_first_only_when_the_earlier_one_was_there(app):
    customer_writes(app, 2)
    first, second = Message.select().where(Message.direction == "in").order_by(Message.sent_at)
    now = utcnow()
    # The first was stored 5 s before the second was routed, yet routed after it.
    Message.update(received_at=now - timedelta(seconds=10)).where(Message.id == first.id).execute()
    BotTurn.update(created_at=now - timedelta(seconds=5)).where(BotTurn.message_id == second.id).execute()
    BotTurn.update(created_at=now).where(BotTurn.message_id == first.id).execute()
    assert checks.misordered() == [(first.conversation_id, first.id, second.id)]
    # Stored only after the second was routed: it could not have gone first.
    Message.update(received_at=now - timedelta(seconds=4.5)).where(Message.id == first.id).execute()
    assert checks.misordered() == []


def test_bot_over_human_counts_a_bot_reply_accepted_while_a_person_held_the_conversation(app):
    team = Team(app)
    team.add("ana")
    customer_writes(app, 1, wa_id="15556660002")
    reply = Message.get((Message.direction == "out") & (Message.sender == "bot"))
    conv = waiting_customer(app, wa_id="15556660002")
    assert team.act("ana", "claim", conv.id).status_code == 200
    claimed = epoch_seconds(Event.get((Event.conversation == conv.id) & (Event.reason == "claimed")).created_at)
    over, in_flight = checks.bot_over_human([sent(reply.id, claimed + 5), sent(reply.id, claimed + 0.5),
                                             sent(reply.id, claimed - 1)])
    assert [(c, ref) for c, ref, _ in over] == [(conv.id, reply.id)] and in_flight == 1
    assert team.act("ana", "release", conv.id, {}).status_code == 200
    released = epoch_seconds(Event.select().where(Event.conversation == conv.id)
                             .order_by(Event.created_at.desc()).get().created_at)
    assert checks.bot_over_human([sent(reply.id, released + 1)]) == ([], 0)


def test_sent_twice_counts_a_reference_accepted_twice_and_a_send_without_one(app):
    now = time.time()
    assert checks.sent_twice([sent("m_a", now), sent("m_b", now), sent("m_a", now + 1), sent(None, now)]) == \
        [("m_a", 2), (None, 1)]


def test_sent_twice_allows_one_maintenance_notice_per_customer_and_counts_a_second(app):
    now, notice = time.time(), "We're doing some maintenance."
    once = [sent(None, now, to="1555000001", text=notice), sent(None, now, to="1555000002", text=notice)]
    assert checks.sent_twice(once, maintenance_notice=notice) == []
    again = once + [sent(None, now + 5, to="1555000001", text=notice)]
    assert checks.sent_twice(again, maintenance_notice=notice) == [("maintenance notice to 1555000001", 2)]


def test_timers_not_fired_counts_a_deadline_long_past(app):
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app, wa_id="15556660003")
    assert Conversation.get_by_id(conv.id).offered_agent_id is not None
    assert checks.overdue_timers(TIMERS)["offer"] == []
    backdate(conv.id, offer_expires_at=checks.TIMER_GRACE + 1)
    assert checks.overdue_timers(TIMERS)["offer"] == [conv.id]
    backdate(conv.id, pending_since=300 + checks.TIMER_GRACE + 1)
    assert checks.overdue_timers(TIMERS)["pending"] == [conv.id]
