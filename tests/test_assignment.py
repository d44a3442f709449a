"""Fair assignment: the rotation over online agents, capacity, stickiness."""
import random
from collections import Counter

import pytest

from jobs.context import set_runtime
from models import Channel, Contact, Conversation
from routing.escalate import escalate
from routing.handoff import Actor, claim, close, release
from tests.support import Team

SYSTEM = Actor(agent=None, role="admin")


@pytest.fixture
def desk(make_desk):
    """The human side without a notification branch: these stories count offers, not messages."""
    return make_desk(N8N_NOTIFY_URL=None)


def new_conversations(count: int) -> list[str]:
    channel = Channel.create(provider="sandbox", phone_number_id="sandbox-1")
    ids = []
    for i in range(count):
        contact = Contact.create(channel=channel, wa_id=f"1555{i:07d}", name=f"customer {i}")
        ids.append(Conversation.create(channel=channel, contact=contact).id)
    return ids


def escalate_and_see_who_is_offered(rt, conversation_id: str) -> str | None:
    escalate(rt.changes, conversation_id, reason="explicit_request", actor="test")
    return Conversation.get_by_id(conversation_id).offered_agent_id


def test_round_robin_is_fair_over_1000_escalations_with_agents_coming_and_going(desk, team):
    rt = desk.extensions["baton"]
    names = ["ana", "bo", "cy", "di", "ed"]
    for name in names:
        team.add(name, max_concurrent=3)
    rng = random.Random(7)
    conversations = new_conversations(1000)
    online = set(names)
    phase_counts: Counter = Counter()
    totals: Counter = Counter()
    for n, conversation_id in enumerate(conversations):
        if n % 100 == 0 and n:
            # Each phase: check the rotation was fair among those online, then change who is online.
            counts = [phase_counts[team.id(name)] for name in sorted(online)]
            assert max(counts) - min(counts) <= 1, (n, sorted(online), counts)
            assert set(phase_counts) <= {team.id(name) for name in online}
            phase_counts.clear()
            going = rng.sample(sorted(online), k=rng.randint(0, min(2, len(online) - 2)))
            coming = [name for name in names if name not in online and rng.random() < 0.7]
            for name in going:
                team.offline(name)
                online.discard(name)
            for name in coming:
                team.online(name)
                online.add(name)
        offered = escalate_and_see_who_is_offered(rt, conversation_id)
        assert offered is not None
        phase_counts[offered] += 1
        totals[offered] += 1
        close(rt.changes, conversation_id, SYSTEM)   # capacity never binds here
    assert sum(totals.values()) == 1000
    assert len(totals) == len(names)


def test_never_assigned_agents_go_first_and_ties_break_by_id(desk, team):
    rt = desk.extensions["baton"]
    first = team.add("zed")
    conversations = new_conversations(3)
    assert escalate_and_see_who_is_offered(rt, conversations[0]) == first.id
    late_a = team.add("amy")
    late_b = team.add("abe")
    expected = sorted([late_a.id, late_b.id])
    assert escalate_and_see_who_is_offered(rt, conversations[1]) == expected[0]
    assert escalate_and_see_who_is_offered(rt, conversations[2]) == expected[1]


def test_a_full_agent_is_skipped_until_capacity_frees(desk, team):
    rt = desk.extensions["baton"]
    ana = team.add("ana", max_concurrent=1)
    bo = team.add("bo", max_concurrent=1)
    a, b, c = new_conversations(3)
    assert {escalate_and_see_who_is_offered(rt, a), escalate_and_see_who_is_offered(rt, b)} == {ana.id, bo.id}
    assert escalate_and_see_who_is_offered(rt, c) is None
    holder = Conversation.get_by_id(a).offered_agent_id
    close(rt.changes, a, SYSTEM)
    from jobs import timers
    timers.handoff_timers()
    assert Conversation.get_by_id(c).offered_agent_id == holder
    assert rt.presence.loads([ana.id, bo.id]) == {ana.id: 1, bo.id: 1}


def served_then_released(rt, team) -> tuple[str, str]:
    """A customer served by one of two agents, then handed back to the bot
    (cooldown spent): returns (conversation, the agent who served them)."""
    ana, bo = team.add("ana"), team.add("bo")
    (conversation_id,) = new_conversations(1)
    first = escalate_and_see_who_is_offered(rt, conversation_id)
    agent = ana if first == ana.id else bo
    claim(rt.changes, rt.reservations, conversation_id, Actor(agent, "agent"))
    release(rt.changes, conversation_id, Actor(agent, "agent"))
    Conversation.update(cooldown_remaining=0).where(Conversation.id == conversation_id).execute()
    return conversation_id, agent.id


def test_a_returning_customer_goes_back_to_their_previous_agent(desk, team):
    rt = desk.extensions["baton"]
    conversation_id, previous = served_then_released(rt, team)
    # The rotation alone would now pick the other agent; stickiness wins.
    assert escalate_and_see_who_is_offered(rt, conversation_id) == previous


def test_stickiness_can_be_turned_off(app_factory):
    app = app_factory(SENTIMENT_LANGUAGES="", STICKY_ASSIGNMENT="false")
    rt = app.extensions["baton"]
    set_runtime(rt)
    conversation_id, previous = served_then_released(rt, Team(app))
    assert escalate_and_see_who_is_offered(rt, conversation_id) != previous


def test_reconcile_repairs_reservations_after_redis_loses_them(desk, team):
    rt = desk.extensions["baton"]
    ana = team.add("ana", max_concurrent=1)
    a, b = new_conversations(2)
    assert escalate_and_see_who_is_offered(rt, a) == ana.id
    rt.redis.delete(rt.presence.load_key(ana.id))            # Redis flushed, say
    assert rt.reservations.reconcile() == {"added": 1, "removed": 0}
    assert escalate_and_see_who_is_offered(rt, b) is None   # still full: no double booking


def test_an_offer_that_loses_a_race_keeps_its_agents_place_in_the_rotation(desk, team, monkeypatch):
    """Two processes offer the same waiting customer at once: both reserve a seat,
    one commits, the other's compare-and-set fails. The loser's agent was never
    offered anything, so it must stay next in line (CI caught the rotation going
    ana, cy, … instead of cy, ana, … through real processes)."""
    from routing import assignment

    rt = desk.extensions["baton"]
    ana, bo, cy = (team.add(name) for name in ("ana", "bo", "cy"))
    raced, later = new_conversations(2)
    escalate(rt.changes, raced, reason="explicit_request", actor="test")
    Conversation.update(offered_agent_id=None).where(Conversation.id == raced).execute()
    rt.reservations.release(ana.id, raced)                       # waiting, no offer: as the timers find it
    real_reserve_next, raced_once = rt.reservations.reserve_next, []

    def reserve_next_while_another_process_offers(conversation_id, candidates, sticky):
        pick = real_reserve_next(conversation_id, candidates, sticky)
        if conversation_id == raced and not raced_once:
            raced_once.append(pick.agent_id)
            assert assignment.offer_next(rt.changes, rt.reservations, raced)     # the other process wins
        return pick

    monkeypatch.setattr(rt.reservations, "reserve_next", reserve_next_while_another_process_offers)
    assert assignment.offer_next(rt.changes, rt.reservations, raced) is False    # lost: already offered
    monkeypatch.setattr(rt.reservations, "reserve_next", real_reserve_next)
    winner = Conversation.get_by_id(raced).offered_agent_id
    assert raced_once and winner and winner != raced_once[0]
    assert rt.presence.loads([raced_once[0]])[raced_once[0]] == 0               # the loser's seat is free
    assert escalate_and_see_who_is_offered(rt, later) == raced_once[0]            # and it is next in line


def test_undoing_a_pick_leaves_a_later_pick_of_the_same_agent_alone(desk, team):
    rt = desk.extensions["baton"]
    ana = team.add("ana", max_concurrent=2)
    first, second = new_conversations(2)
    one = rt.reservations.reserve_next(first, [ana], None)
    two = rt.reservations.reserve_next(second, [ana], None)
    rt.reservations.undo(one)                                    # late: ana has been picked since
    last = rt.redis.hget(rt.presence.last_assigned_key, ana.id).decode()
    assert last == two.seq and rt.presence.loads([ana.id])[ana.id] == 1
