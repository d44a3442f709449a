"""The human side, one customer at a time: offers, claims, replies, typing,
release with cooldown, transfer, close, and refusals that change nothing."""
import pytest

from jobs import timers
from models import BotTurn, Conversation, Message
from tests.support import (Team, backdate, bot_replies, conversation_of, customer_says, outbox_texts,
                                   state_and_trail, trail, waiting_customer)
from tests.support import bearer, settle


def test_a_customer_asking_for_a_human_is_offered_to_an_online_agent_of_the_group(desk, team, n8n):
    team.add("ana")
    team.add("bo", groups=("billing",))
    conv = waiting_customer(desk)
    assert conv.state == "PENDING_AGENT"
    assert conv.offered_agent_id == team.id("ana")
    [offered] = [e["json"] for e in n8n.received("handoff.offered")]
    assert offered["agent"]["id"] == team.id("ana")
    assert offered["console_url"].endswith(f"/console/conversations/{conv.id}")
    notices = [text for text in outbox_texts() if text and "connecting you" in text]
    assert len(notices) == 1


def test_an_offline_agent_or_one_whose_heartbeat_lapsed_gets_no_offer(desk, team):
    team.add("ana")
    team.add("bo", online=False)
    team.heartbeat_lapses("ana")                  # her laptop closed; nobody edits a row
    me = team.call("ana", "GET", "/api/v1/agents/me").json
    assert (me["status"], me["online"]) == ("online", False)
    conv = waiting_customer(desk)
    assert conv.offered_agent_id is None
    assert team.call("ana", "POST", "/api/v1/agents/me/heartbeat").json["online"] is True
    assert conversation_of().offered_agent_id == team.id("ana")     # offered as soon as she is back


def test_the_offered_agent_claims_and_then_receives_the_customers_messages(desk, team, n8n):
    team.add("ana")
    conv = waiting_customer(desk)
    response = team.act("ana", "claim", conv.id)
    assert response.status_code == 200
    assert (response.json["state"], response.json["assigned_agent_id"]) == ("AGENT_CONTROLLED", team.id("ana"))
    settle(desk)
    [accepted] = [e["json"] for e in n8n.received("handoff.accepted")]
    assert accepted["agent"]["name"] == "ana"
    customer_says(desk, "my order 123 never came")
    settle(desk)
    for_agent = [e["json"] for e in n8n.received("message.for_agent")]
    assert for_agent[-1]["message"]["text"] == "my order 123 never came"
    assert for_agent[-1]["agent"]["id"] == team.id("ana")
    assert for_agent[-1]["console_url"] == f"http://baton.test/console/conversations/{for_agent[-1]['conversation']['id']}"
    assert BotTurn.select().count() == 0


def test_replying_to_an_offer_claims_it_and_sends_in_order(desk, team):
    team.add("ana")
    conv = waiting_customer(desk)
    first = team.act("ana", "messages", conv.id, {"text": "Hi, Ana here"})
    second = team.act("ana", "messages", conv.id, {"text": "How can I help?"})
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json["message"]["sender"] == "agent"
    assert first.json["message"]["agent_id"] == team.id("ana")
    settle(desk)
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.assigned_agent_id) == ("AGENT_CONTROLLED", team.id("ana"))
    assert outbox_texts()[-2:] == ["Hi, Ana here", "How can I help?"]


def test_a_second_claim_is_409_already_assigned_and_changes_nothing(desk, team):
    team.add("ana")
    team.add("bo")
    conv = waiting_customer(desk)
    assert team.act("ana", "claim", conv.id).status_code == 200
    before = state_and_trail(conv.id)
    # Bo can no longer see it (not pending, not his): 403. A supervisor sees it: 409.
    assert team.act("bo", "claim", conv.id).status_code == 403
    team.add("sue", role="supervisor")
    response = team.act("sue", "claim", conv.id)
    assert (response.status_code, response.json["error"]) == (409, "already_assigned")
    assert state_and_trail(conv.id) == before


@pytest.mark.parametrize("action,body", [("messages", {"text": "hi"}), ("release", {}), ("close", {}),
                                         ("transfer", {"group": "billing"}), ("typing", {"typing": True})])
def test_an_agent_acting_on_another_agents_conversation_gets_403_and_nothing_changes(desk, team, action, body):
    team.add("ana")
    team.add("bo")
    conv = waiting_customer(desk)
    team.act("ana", "claim", conv.id)
    settle(desk)
    before = state_and_trail(conv.id)
    messages = Message.select().count()
    response = team.act("bo", action, conv.id, body)
    assert response.status_code == 403
    assert set(response.json) == {"error", "message", "details"}
    assert state_and_trail(conv.id) == before
    assert Message.select().count() == messages


@pytest.mark.parametrize("action,body,status,error", [
    ("claim", None, 404, "not_found"), ("messages", {"text": "x"}, 404, "not_found"),
    ("release", {}, 404, "not_found"), ("messages", {}, 422, "validation_failed"),
    ("messages", {"text": "x", "template": {"name": "t", "language": "en"}}, 422, "validation_failed"),
    ("transfer", {}, 422, "validation_failed"), ("typing", {"typing": "maybe"}, 422, "validation_failed"),
])
def test_bad_calls_are_clear_errors(desk, team, action, body, status, error):
    team.add("ana")
    conv = waiting_customer(desk)
    target = "c_nope" if status == 404 else conv.id
    before = state_and_trail(conv.id)
    response = team.act("ana", action, target, body)
    assert (response.status_code, response.json["error"]) == (status, error)
    assert state_and_trail(conv.id) == before


def test_closing_twice_is_409_wrong_state(desk, team):
    team.add("ana")
    conv = waiting_customer(desk)
    team.act("ana", "claim", conv.id)
    assert team.act("ana", "close", conv.id).json["state"] == "CLOSED"
    team.add("sue", role="supervisor")
    before = state_and_trail(conv.id)
    response = team.act("sue", "close", conv.id)
    assert (response.status_code, response.json["error"]) == (409, "wrong_state")
    assert state_and_trail(conv.id) == before


def test_release_gives_the_bot_a_cooldown_so_the_customer_is_not_bounced_straight_back(desk, team, n8n):
    team.add("ana")
    conv = waiting_customer(desk)
    team.act("ana", "claim", conv.id)
    released = team.act("ana", "release", conv.id, {"note": "sorted"})
    assert (released.json["state"], released.json["cooldown_remaining"]) == ("BOT_CONTROLLED", 3)
    settle(desk)
    assert n8n.received("conversation.released")[-1]["json"]["by"]["agent"]["id"] == team.id("ana")
    customer_says(desk, "agent")                  # would escalate, but the cooldown holds
    settle(desk)
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.cooldown_remaining) == ("BOT_CONTROLLED", 2)
    customer_says(desk, "thanks")
    customer_says(desk, "bye")
    settle(desk)
    customer_says(desk, "human please")             # cooldown spent: triggers fire again
    settle(desk)
    assert Conversation.get_by_id(conv.id).state == "PENDING_AGENT"


def test_a_bot_reply_in_flight_during_a_claim_is_refused_and_never_sent(make_desk, n8n, bot_token):
    app = make_desk(N8N_BOT_URL=n8n.url_for("bot"))
    team = Team(app)
    team.add("sue", role="supervisor")
    customer_says(app, "hello")
    settle(app)
    [turn] = [e["json"] for e in n8n.received("bot.turn")]
    conv = conversation_of()
    assert team.act("sue", "claim", conv.id).status_code == 200       # takes over from the bot
    late = bot_replies(app, bot_token, turn, text="Hi!")
    assert (late.status_code, late.json["error"]) == (409, "stale_turn")
    settle(app)
    assert "Hi!" not in outbox_texts()


def sue_types_on_a_bot_conversation(desk, team) -> Conversation:
    """A supervisor (Sue) starts typing on a conversation the bot holds."""
    team.add("sue", role="supervisor")
    customer_says(desk, "hello")
    settle(desk)
    conv = conversation_of()
    assert team.act("sue", "typing", conv.id, {"typing": True}).status_code == 204
    return conv


def test_typing_holds_customer_messages_for_the_agent_who_then_answers(desk, team):
    conv = sue_types_on_a_bot_conversation(desk, team)
    turns = BotTurn.select().count()
    customer_says(desk, "are you there?")
    customer_says(desk, "hello??")
    settle(desk)
    held = list(Message.select().where(Message.routed_to == "held").order_by(Message.sent_at))
    assert [m.text for m in held] == ["are you there?", "hello??"]
    assert BotTurn.select().count() == turns                     # the bot heard nothing
    assert team.act("sue", "messages", conv.id, {"text": "Sue here, yes!"}).status_code == 202
    conv = Conversation.get_by_id(conv.id)
    assert (conv.state, conv.assigned_agent_id, conv.held_since) == ("AGENT_CONTROLLED", team.id("sue"), None)
    assert {m.routed_to for m in Message.select().where(Message.id.in_([m.id for m in held]))} == {"agent"}


def test_when_the_typing_lock_expires_the_held_messages_go_to_the_bot_in_order(desk, team, n8n):
    conv = sue_types_on_a_bot_conversation(desk, team)
    customer_says(desk, "menu")
    customer_says(desk, "hours")
    settle(desk)
    assert Message.select().where(Message.routed_to == "held").count() == 2
    backdate(conv.id, typing_until=1)               # AGENT_TYPING_TTL has passed without a reply
    timers.handoff_timers()
    settle(desk)
    routed = [m.routed_to for m in Message.select().where(Message.direction == "in").order_by(Message.sent_at)]
    assert routed == ["bot", "bot", "bot"]
    answered = [t.message_id for t in BotTurn.select().order_by(BotTurn.created_at, BotTurn.id)]
    inbound = [m.id for m in Message.select().where(Message.direction == "in").order_by(Message.sent_at)]
    assert answered == inbound                                    # one turn each, in the customer's order
    assert ("BOT_CONTROLLED", "BOT_CONTROLLED", "typing_expired") in trail(conv.id)
    [timeout] = [e["json"] for e in n8n.received("handoff.timeout")]
    assert (timeout["reason"], timeout["agent"]["id"]) == ("typing_expired", team.id("sue"))


def test_typing_false_releases_the_hold_at_once(desk, team):
    conv = sue_types_on_a_bot_conversation(desk, team)
    customer_says(desk, "menu")
    settle(desk)
    team.act("sue", "typing", conv.id, {"typing": False})
    settle(desk)
    assert Message.select().where(Message.routed_to == "held").count() == 0
    assert Conversation.get_by_id(conv.id).state == "BOT_CONTROLLED"


def test_transfer_to_a_group_re_offers_away_from_the_current_agent(desk, team, n8n):
    team.add("ana", groups=("support", "billing"))
    team.add("bo", groups=("billing",))
    conv = waiting_customer(desk)
    team.act("ana", "claim", conv.id)
    response = team.act("ana", "transfer", conv.id, {"group": "billing"})
    assert (response.status_code, response.json["state"], response.json["group"]) == (200, "PENDING_AGENT", "billing")
    settle(desk)
    assert Conversation.get_by_id(conv.id).offered_agent_id == team.id("bo")


def test_transfer_to_an_agent_offers_it_to_them(desk, team):
    team.add("ana")
    team.add("cy")
    conv = waiting_customer(desk)
    team.act(conv.offered_agent_id == team.id("ana") and "ana" or "cy", "claim", conv.id)
    holder = Conversation.get_by_id(conv.id).assigned_agent_id
    other = "cy" if holder == team.id("ana") else "ana"
    holder_name = "ana" if other == "cy" else "cy"
    response = team.act(holder_name, "transfer", conv.id, {"agent_id": team.id(other)})
    assert response.json["offered_agent_id"] == team.id(other)
    assert team.act(other, "claim", conv.id).json["assigned_agent_id"] == team.id(other)


def test_capacity_is_never_exceeded_and_the_rest_waits(desk, team):
    team.add("ana", max_concurrent=2)
    convs = [waiting_customer(desk, wa_id=f"1555000{i:04d}") for i in range(3)]
    offered = [Conversation.get_by_id(c.id).offered_agent_id for c in convs]
    assert offered.count(team.id("ana")) == 2 and offered.count(None) == 1
    team.act("ana", "close", next(c.id for c, o in zip(convs, offered) if o))
    timers.handoff_timers()
    assert [Conversation.get_by_id(c.id).offered_agent_id for c in convs].count(team.id("ana")) == 2


def test_agents_are_created_by_admins_and_listed_with_presence(desk, admin_token):
    client = desk.test_client()
    created = client.post("/api/v1/agents", headers=bearer(admin_token),
                          json={"name": "Ana", "groups": ["support", "billing"], "max_concurrent": 3})
    assert created.status_code == 201
    token = created.json["token"]
    assert client.patch("/api/v1/agents/me", headers=bearer(token), json={"status": "online"}).json["online"]
    listed = client.get("/api/v1/agents", headers=bearer(admin_token)).json["items"]
    assert [(a["name"], a["online"], a["active_conversations"]) for a in listed] == [("Ana", True, 0)]
    assert "token" not in listed[0]
    assert client.post("/api/v1/agents", headers=bearer(token), json={"name": "x"}).status_code == 403
    bad = client.post("/api/v1/agents", headers=bearer(admin_token), json={"name": "x", "max_concurrent": 0})
    assert bad.status_code == 422


def test_flask_baton_agent_add_prints_the_token_alone_on_its_last_line(desk):
    result = desk.test_cli_runner().invoke(args=["baton", "agent", "add", "--name", "Ana", "--groups",
                                                 "support,billing", "--max-concurrent", "5"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    me = desk.test_client().get("/api/v1/agents/me", headers=bearer(token)).json
    assert (me["name"], me["groups"], me["max_concurrent"]) == ("Ana", ["billing", "support"], 5)


def _claimed_by_ana(desk, team):
    conv = waiting_customer(desk)
    team.act("ana", "claim", conv.id)
    return conv


def _released(desk, team):
    conv = _claimed_by_ana(desk, team)
    team.act("ana", "release", conv.id)
    return conv


CONFLICTS = [
    ("claiming beyond your capacity", "cy", "claim", None, "at_capacity", lambda desk, team: waiting_customer(desk)),
    ("releasing a conversation the bot already has", "sue", "release", {}, "wrong_state", _released),
    ("transferring a conversation the bot has", "sue", "transfer", {"group": "billing"}, "wrong_state", _released),
    ("transferring to an agent who is offline", "ana", "transfer", {"agent_id": "OFFLINE"}, "agent_unavailable",
     _claimed_by_ana),
    ("transferring to the agent who has it", "sue", "transfer", {"agent_id": "ANA"}, "wrong_state", _claimed_by_ana),
    ("transferring to an agent with no room", "ana", "transfer", {"agent_id": "CY"}, "agent_at_capacity",
     _claimed_by_ana),
]


@pytest.mark.parametrize("story, who, action, body, error, setup", CONFLICTS, ids=[c[0] for c in CONFLICTS])
def test_every_409_changes_nothing(desk, team, story, who, action, body, error, setup):
    team.add("ana")
    team.add("sue", role="supervisor")
    cy = team.add("cy", max_concurrent=1)
    team.add("olaf", online=False)
    other = waiting_customer(desk, wa_id="15550009999")          # fills cy's one seat
    team.act("cy", "claim", other.id)
    team.offline("cy")
    team.online("cy")
    conv = setup(desk, team)
    settle(desk)
    if body and "agent_id" in body:
        body = {"agent_id": {"OFFLINE": team.id("olaf"), "ANA": team.id("ana"), "CY": cy.id}[body["agent_id"]]}
    before, messages = state_and_trail(conv.id), Message.select().count()
    loads = desk.extensions["baton"].presence.loads([team.id(n) for n in ("ana", "sue", "cy", "olaf")])
    response = team.act(who, action, conv.id, body)
    assert (response.status_code, response.json["error"]) == (409, error), response.json
    assert state_and_trail(conv.id) == before
    assert Message.select().count() == messages
    assert desk.extensions["baton"].presence.loads(list(loads)) == loads


def test_an_angry_customer_is_handed_to_a_human_with_urgency(make_desk, n8n):
    app = make_desk(SENTIMENT_LANGUAGES=None)          # sentiment on, as by default
    customer_says(app, "This is the worst service ever, I am furious!!!")
    settle(app)
    conv = conversation_of()
    assert conv.state == "PENDING_AGENT"
    assert conv.to_dict()["escalation"]["reason"] == "sentiment"
    assert conv.escalation_urgency > 0.6
    [requested] = [e["json"] for e in n8n.received("handoff.requested")]
    assert requested["reason"] == "sentiment"


def test_an_angry_customer_in_a_language_the_analyser_cannot_read_stays_with_the_bot(make_desk):
    app = make_desk(SENTIMENT_LANGUAGES=None)          # sentiment on, as by default
    customer_says(app, "esto es una mierda, el peor servicio del mundo")
    settle(app)
    assert conversation_of().state == "BOT_CONTROLLED"


def test_the_sentiment_trigger_can_be_turned_off(desk):
    customer_says(desk, "This is the worst service ever, I am furious!!!")
    settle(desk)
    assert conversation_of().state == "BOT_CONTROLLED"


@pytest.mark.parametrize("body", [{"status": "busy"}, {}, {"status": "online", "extra": 1}])
def test_a_bad_presence_update_is_422_and_changes_nothing(desk, team, body):
    team.add("ana", online=False)
    response = team.call("ana", "PATCH", "/api/v1/agents/me", body)
    assert (response.status_code, response.json["error"]) == (422, "validation_failed")
    me = team.call("ana", "GET", "/api/v1/agents/me").json
    assert (me["status"], me["online"]) == ("offline", False)
