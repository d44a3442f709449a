"""Durable timers, told as stories: the clock is moved by back-dating the
deadline columns the timers read (and a heartbeat lapses by losing its Redis
key, as its expiry would), then the cron job runs as in production."""
import pytest

from jobs import timers
from models import BotTurn, CallbackRequest, Conversation
from tests.support import (Team, backdate, bot_replies, conversation_of, customer_says, outbox_texts,
                                   trail, waiting_customer)
from tests.support import settle


def pending_times_out(app, conversation_id: str) -> dict:
    """PENDING_TIMEOUT (300 s) passes for a waiting conversation; the cron's timers run."""
    backdate(conversation_id, pending_since=301)
    outcome = timers.handoff_timers()
    settle(app)
    return outcome


def test_an_unaccepted_offer_moves_on_to_the_next_agent(desk, team, n8n):
    ana, bo = team.add("ana"), team.add("bo")
    conv = waiting_customer(desk)
    first = conv.offered_agent_id
    backdate(conv.id, offer_expires_at=1)
    outcome = timers.handoff_timers()
    settle(desk)
    assert outcome["offers_expired"] == 1
    conv = Conversation.get_by_id(conv.id)
    assert conv.offered_agent_id == ({ana.id, bo.id} - {first}).pop()
    assert conv.offers_lapsed == [first]
    timeouts = [e["json"] for e in n8n.received("handoff.timeout")]
    assert [(t["reason"], t["agent"]["id"]) for t in timeouts] == [("offer_expired", first)]
    assert ("PENDING_AGENT", "PENDING_AGENT", "offer_expired") in trail(conv.id)
    assert desk.extensions["baton"].presence.loads([first])[first] == 0     # capacity given back


def test_a_second_tick_does_not_expire_the_same_offer_twice(desk, team):
    team.add("ana")
    team.add("bo")
    conv = waiting_customer(desk)
    backdate(conv.id, offer_expires_at=1)
    assert timers.handoff_timers()["offers_expired"] == 1
    assert timers.handoff_timers()["offers_expired"] == 0
    assert [r for _, _, r in trail(conv.id)].count("offer_expired") == 1


@pytest.mark.parametrize("policy", ["collect_callback", "reroute_without_group"])
def test_pending_timeout_collect_callback_hands_the_customer_back_to_the_bot(make_desk, n8n, policy):
    settings = {"PENDING_TIMEOUT_POLICY": "collect_callback"} if policy == "collect_callback" else {}
    app = make_desk(**settings)
    team = Team(app)
    conv = waiting_customer(app)                         # nobody online
    assert pending_times_out(app, conv.id)["pending_timeouts"] == 1
    conv = Conversation.get_by_id(conv.id)
    assert conv.state == "BOT_CONTROLLED"
    assert conv.metadata["mode"] == "collect_callback"
    [request] = CallbackRequest.select()
    assert (request.conversation_id, request.status, request.group) == (conv.id, "open", "support")
    assert "Leave your name" in outbox_texts()[-1]
    assert [e["json"]["reason"] for e in n8n.received("handoff.timeout")] == ["pending_timeout"]
    [callback] = [e["json"] for e in n8n.received("callback.requested")]
    assert (callback["callback"]["id"], callback["callback"]["status"], callback["reason"],
            callback["conversation"]["contact"]["wa_id"], callback["console_url"]) == (
        request.id, "open", request.reason, conv.contact.wa_id,
        f"http://baton.test/console/conversations/{conv.id}")
    assert callback["waiting_since"] < callback["callback"]["created_at"]
    team.add("sue", role="supervisor")
    listed = team.call("sue", "GET", "/api/v1/callbacks").json["items"]
    assert [c["id"] for c in listed] == [request.id]
    team.add("bo", groups=("billing",))
    assert team.call("bo", "GET", "/api/v1/callbacks").json["items"] == []
    # The bot resumes in collect_callback mode.
    customer_says(app, "call me at 5pm on 555 1234")
    settle(app)
    assert Conversation.get_by_id(conv.id).state == "BOT_CONTROLLED"
    assert BotTurn.select().order_by(BotTurn.created_at.desc()).first().mode == "collect_callback"


def test_pending_timeout_close_says_goodbye_politely(make_desk, n8n):
    app = make_desk(PENDING_TIMEOUT_POLICY="close")
    conv = waiting_customer(app)
    pending_times_out(app, conv.id)
    assert Conversation.get_by_id(conv.id).state == "CLOSED"
    assert "nobody from our team is available" in outbox_texts()[-1]
    assert [e["event"] for e in n8n.received() if e["event"] in ("handoff.timeout", "conversation.closed")] == \
        ["handoff.timeout", "conversation.closed"]


def test_pending_timeout_reroute_moves_to_the_overflow_group(make_desk):
    app = make_desk(PENDING_TIMEOUT_POLICY="reroute", PENDING_TIMEOUT_GROUP="overflow")
    team = Team(app)
    conv = waiting_customer(app)
    olive = team.add("olive", groups=("overflow",))
    pending_times_out(app, conv.id)
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.group, conv.offered_agent_id) == ("PENDING_AGENT", "overflow", olive.id)
    assert conv.to_dict()["escalation"]["reason"] == "timeout_reroute"
    # A second timeout in the overflow group does not loop: it collects a callback.
    pending_times_out(app, conv.id)
    assert Conversation.get_by_id(conv.id).state == "BOT_CONTROLLED"
    assert CallbackRequest.select().count() == 1


def test_an_agent_who_leaves_the_customer_waiting_loses_the_conversation(desk, team, n8n):
    ana, bo = team.add("ana"), team.add("bo")
    conv = waiting_customer(desk)
    holder = ana if conv.offered_agent_id == ana.id else bo
    other = bo if holder is ana else ana
    holder_name = "ana" if holder is ana else "bo"
    team.act(holder_name, "claim", conv.id)
    backdate(conv.id, awaiting_agent_since=301)
    assert timers.handoff_timers()["unresponsive"] == 1
    settle(desk)
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.assigned_agent_id, conv.offered_agent_id) == ("PENDING_AGENT", None, other.id)
    assert [(e["json"]["reason"], e["json"]["agent"]["id"]) for e in n8n.received("handoff.timeout")] == \
        [("agent_unresponsive", holder.id)]


def test_an_agent_who_answers_is_not_timed_out(desk, team):
    team.add("ana")
    conv = waiting_customer(desk)
    team.act("ana", "messages", conv.id, {"text": "Hi, I'm here"})
    assert Conversation.get_by_id(conv.id).awaiting_agent_since is None
    customer_says(desk, "great, my order is late")
    settle(desk)
    assert Conversation.get_by_id(conv.id).awaiting_agent_since is not None     # the clock runs again
    team.act("ana", "messages", conv.id, {"text": "Let me check"})
    timers.handoff_timers()
    assert Conversation.get_by_id(conv.id).state == "AGENT_CONTROLLED"


def test_idle_conversations_close(make_desk):
    app = make_desk(IDLE_CLOSE_AFTER=3600)
    team = Team(app)
    team.add("ana", max_concurrent=1)
    conv = waiting_customer(app)
    team.act("ana", "claim", conv.id)
    backdate(conv.id, last_activity_at=3601)
    assert timers.sweep()["idle_closed"] == 1
    conv = Conversation.get_by_id(conv.id)
    assert conv.state == "CLOSED"
    assert ("AGENT_CONTROLLED", "CLOSED", "idle") in trail(conv.id)
    assert app.extensions["baton"].presence.loads([team.id("ana")])[team.id("ana")] == 0


def test_the_bot_failing_again_and_again_hands_over(make_desk, n8n, bot_token):
    app = make_desk(N8N_BOT_URL=n8n.url_for("bot"), BOT_FAILURE_LIMIT=3)
    statuses = []
    for n in range(3):
        customer_says(app, f"blorp {n}")
        settle(app)
        turn = [e["json"] for e in n8n.received("bot.turn")][-1]
        response = bot_replies(app, bot_token, turn, text="Sorry, I didn't get that.", intent="fallback")
        statuses.append((response.status_code, response.json["status"]))
    assert statuses == [(202, "queued"), (202, "queued"), (200, "escalated")]
    settle(app)
    conv = conversation_of()
    assert (conv.state, conv.escalation_reason) == ("PENDING_AGENT", "bot_failures")
    assert outbox_texts()[-2:] == ["Sorry, I didn't get that.", app.extensions["baton"].settings.HANDOFF_NOTICE]


def test_an_understood_turn_resets_the_failure_count(make_desk, n8n, bot_token):
    app = make_desk(N8N_BOT_URL=n8n.url_for("bot"), BOT_FAILURE_LIMIT=2)
    for n, intent in enumerate(["fallback", "order_status", "fallback"]):
        customer_says(app, f"message {n}")
        settle(app)
        turn = [e["json"] for e in n8n.received("bot.turn")][-1]
        bot_replies(app, bot_token, turn, text="ok", intent=intent)
    conv = conversation_of()
    assert (conv.state, conv.bot_failures) == ("BOT_CONTROLLED", 1)


def test_an_agent_going_away_hands_their_offers_on_at_once(desk, team):
    ana = team.add("ana")
    team.add("bo")
    conv = waiting_customer(desk)
    first = "ana" if conv.offered_agent_id == ana.id else "bo"
    other = "bo" if first == "ana" else "ana"
    assert team.call(first, "PATCH", "/api/v1/agents/me", {"status": "away"}).json["online"] is False
    settle(desk)
    assert Conversation.get_by_id(conv.id).offered_agent_id == team.id(other)
    assert ("PENDING_AGENT", "PENDING_AGENT", "offer_withdrawn") in trail(conv.id)


def test_metrics_show_the_human_side(desk, team):
    waiting_customer(desk)                                  # nobody online yet
    team.add("ana", online=False)
    backdate(conversation_of().id, pending_since=42)
    text = desk.test_client().get("/metrics").get_data(as_text=True)
    assert "baton_agents_online 0.0" in text
    assert "baton_pending_unoffered 1.0" in text
    oldest = float(next(line.split()[1] for line in text.splitlines()
                        if line.startswith("baton_pending_oldest_seconds")))
    assert 41 <= oldest < 60
    team.online("ana")
    timers.handoff_timers()
    text = desk.test_client().get("/metrics").get_data(as_text=True)
    assert "baton_agents_online 1.0" in text and "baton_pending_unoffered 0.0" in text


def test_an_offer_to_an_agent_whose_heartbeat_lapsed_moves_on_at_the_next_tick(desk, team):
    ana = team.add("ana")
    conv = waiting_customer(desk)
    assert conv.offered_agent_id == ana.id
    bo = team.add("bo")
    team.heartbeat_lapses("ana")                       # both heartbeats lapse; Bo's comes back
    team.heartbeat_lapses("bo")
    team.call("bo", "POST", "/api/v1/agents/me/heartbeat")
    assert timers.handoff_timers()["offers_withdrawn"] == 1
    assert Conversation.get_by_id(conv.id).offered_agent_id == bo.id
    assert ("PENDING_AGENT", "PENDING_AGENT", "offer_withdrawn") in trail(conv.id)


def test_an_agent_marks_a_callback_request_done(make_desk):
    app = make_desk(PENDING_TIMEOUT_POLICY="collect_callback")
    team = Team(app)
    conv = waiting_customer(app)
    pending_times_out(app, conv.id)
    [request] = CallbackRequest.select()
    team.add("ana", online=False)
    team.add("bo", groups=("billing",), online=False)
    refused = team.call("bo", "POST", f"/api/v1/callbacks/{request.id}/done", {})
    assert refused.status_code == 403
    assert CallbackRequest.get_by_id(request.id).status == "open"
    assert team.call("ana", "POST", "/api/v1/callbacks/cb_nope/done", {}).status_code == 404
    done = team.call("ana", "POST", f"/api/v1/callbacks/{request.id}/done", {"note": "called, all sorted"})
    assert (done.status_code, done.json["status"], done.json["done_by"], done.json["note"]) == (
        200, "done", team.id("ana"), "called, all sorted")
    assert team.call("ana", "GET", "/api/v1/callbacks").json["items"] == []
    assert [c["id"] for c in team.call("ana", "GET", "/api/v1/callbacks?status=done").json["items"]] == [request.id]


def test_a_seat_freed_during_a_pass_goes_to_the_customer_waiting_longest(desk, team, monkeypatch):
    """CI caught this through real processes: the cron's pass found no room for the
    customers at the head of the line, a close freed a seat while it was still
    going, and a customer further back took it."""
    team.add("ana", max_concurrent=1)
    held = waiting_customer(desk, wa_id="15551000100")
    assert held.offered_agent_id == team.id("ana")
    assert team.act("ana", "claim", held.id).status_code == 200
    line = [waiting_customer(desk, wa_id=f"1555100010{i}") for i in (1, 2, 3)]
    for seconds, conv in zip((30, 20, 10), line):
        backdate(conv.id, pending_since=seconds)
    first_in_line = line[0].id
    reservations = desk.extensions["baton"].reservations
    real_reserve_next = reservations.reserve_next

    def reserve_next_while_ana_finishes(conversation_id, *args):
        chosen = real_reserve_next(conversation_id, *args)
        if conversation_id == first_in_line and chosen is None:
            monkeypatch.setattr(reservations, "reserve_next", real_reserve_next)
            assert team.act("ana", "close", held.id).status_code == 200   # her seat frees mid-pass
        return chosen

    monkeypatch.setattr(reservations, "reserve_next", reserve_next_while_ana_finishes)
    timers.handoff_timers()
    settle(desk)
    assert [Conversation.get_by_id(c.id).offered_agent_id for c in line[1:]] == [None, None]
    assert timers.handoff_timers()["offered"] == 1
    assert Conversation.get_by_id(first_in_line).offered_agent_id == team.id("ana")
