"""Reading conversations and escalating them over the API."""
import time
from datetime import datetime, timezone

import pytest

from models import ApiToken, Conversation, Event, Message, OutboxEntry
from tests.support import ASK_FOR_A_HUMAN, CUSTOMER, customer_says
from tests.support import bearer


@pytest.fixture
def conversation(app, work):
    customer_says(app, "hello")
    work()
    return Conversation.get()


def snapshot():
    return ([(c.id, c.state, c.version) for c in Conversation.select().order_by(Conversation.id)],
            Event.select().count(), Message.select().count())


def test_a_bot_reads_a_conversation_in_the_contract_shape(client, conversation, bot_token):
    response = client.get(f"/api/v1/conversations/{conversation.id}", headers=bearer(bot_token))
    assert response.status_code == 200
    body = response.json
    assert set(body) >= {"id", "state", "version", "channel", "contact", "assigned_agent_id", "offered_agent_id",
                         "group", "escalation", "cooldown_remaining", "pending_since", "last_inbound_at",
                         "window_expires_at", "metadata", "updated_at"}
    assert body["channel"]["provider"] == "sandbox" and body["contact"]["wa_id"] == CUSTOMER
    assert body["updated_at"].endswith("Z") and body["window_expires_at"].endswith("Z")


def test_history_comes_in_the_order_baton_stored_it_and_pages_with_after(app, client, bot_token):
    # Arriving newest first (a late delivery), the messages are listed as they were stored, by seq.
    base = int(time.time()) - 600
    for i, text in reversed(list(enumerate(["one", "two", "three"]))):
        customer_says(app, text, timestamp=base + i, message_id=f"wamid.H{i}")
    conv = Conversation.get()
    page = client.get(f"/api/v1/conversations/{conv.id}/messages?limit=2", headers=bearer(bot_token)).json
    assert [(m["text"], m["seq"]) for m in page["items"]] == [("three", 1), ("two", 2)] and page["next_cursor"]
    rest = client.get(f"/api/v1/conversations/{conv.id}/messages?after={page['next_cursor']}",
                      headers=bearer(bot_token)).json
    assert [(m["text"], m["seq"]) for m in rest["items"]] == [("one", 3)]
    assert rest["next_cursor"] is None
    by_seq = client.get(f"/api/v1/conversations/{conv.id}/messages?after=1&before=3", headers=bearer(bot_token)).json
    assert [m["text"] for m in by_seq["items"]] == ["two"]


def test_history_before_a_time(app, client, bot_token):
    base = int(time.time()) - 600
    for i, text in enumerate(["one", "two"]):
        customer_says(app, text, timestamp=base + 10 * i, message_id=f"wamid.T{i}")
    conv = Conversation.get()
    between = datetime.fromtimestamp(base + 5, timezone.utc).isoformat().replace("+00:00", "Z")
    page = client.get(f"/api/v1/conversations/{conv.id}/messages?before={between}",
                      headers=bearer(bot_token)).json
    assert [m["text"] for m in page["items"]] == ["one"]


def test_the_list_is_newest_activity_first_and_pages_with_a_cursor(app, client, work, bot_token):
    for n in range(3):
        customer_says(app, "hello", wa_id=f"1555666000{n}")
        work()
    first = client.get("/api/v1/conversations?limit=2", headers=bearer(bot_token)).json
    assert [c["contact"]["wa_id"] for c in first["items"]] == ["15556660002", "15556660001"]
    second = client.get(f"/api/v1/conversations?limit=2&cursor={first['next_cursor']}", headers=bearer(bot_token)).json
    assert [c["contact"]["wa_id"] for c in second["items"]] == ["15556660000"]
    assert second["next_cursor"] is None


def test_the_list_filters_by_state_and_contact(app, client, work, bot_token):
    customer_says(app, "hello", wa_id="15556660011")
    customer_says(app, ASK_FOR_A_HUMAN, wa_id="15556660012")
    work()
    pending = client.get("/api/v1/conversations?state=PENDING_AGENT", headers=bearer(bot_token)).json["items"]
    assert [c["contact"]["wa_id"] for c in pending] == ["15556660012"]
    mine = client.get("/api/v1/conversations?contact=15556660011", headers=bearer(bot_token)).json["items"]
    assert [c["state"] for c in mine] == ["BOT_CONTROLLED"]


@pytest.mark.parametrize("query", ["state=SLEEPING", "limit=0", "limit=201", "colour=blue", "cursor=%%%"])
def test_bad_list_queries_are_4xx(client, bot_token, query):
    response = client.get(f"/api/v1/conversations?{query}", headers=bearer(bot_token))
    assert response.status_code in (400, 422)
    assert set(response.json) == {"error", "message", "details"}


def test_an_unknown_conversation_is_404(client, bot_token):
    response = client.get("/api/v1/conversations/c_nope", headers=bearer(bot_token))
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_escalating_hands_off_once_and_records_who_and_why(client, conversation, bot_token, work):
    response = client.post(f"/api/v1/conversations/{conversation.id}/escalate", headers=bearer(bot_token),
                           json={"reason": "bot", "urgency": 0.7, "group": "billing", "note": "refund"})
    assert response.status_code == 200
    body = response.json
    assert body["changed"] is True and body["state"] == "PENDING_AGENT" and body["group"] == "billing"
    assert body["escalation"]["reason"] == "bot" and body["escalation"]["urgency"] == 0.7
    assert body["pending_since"].endswith("Z")
    event = Event.get(Event.to_state == "PENDING_AGENT")
    assert (event.actor, event.from_state, event.reason) == ("bot:n8n", "BOT_CONTROLLED", "bot")
    assert event.details["note"] == "refund"
    work()
    assert "connecting you" in OutboxEntry.select().order_by(OutboxEntry.id.desc()).get().payload["text"]["body"]


def test_escalating_twice_changes_nothing_the_second_time(client, conversation, bot_token, work):
    url = f"/api/v1/conversations/{conversation.id}/escalate"
    client.post(url, headers=bearer(bot_token), json={"reason": "bot"})
    before = snapshot()
    again = client.post(url, headers=bearer(bot_token), json={"reason": "bot"})
    assert again.status_code == 200 and again.json["changed"] is False
    assert snapshot() == before
    work()
    assert sum("connecting you" in e.payload["text"]["body"] for e in OutboxEntry.select()) == 1


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "bot", "urgency": 2},
                                  {"reason": "bot", "colour": "red"}],
                         ids=["no reason", "empty reason", "urgency out of range", "unknown field"])
def test_an_escalation_that_breaks_a_rule_is_422_and_changes_nothing(client, conversation, bot_token, body):
    before = snapshot()
    response = client.post(f"/api/v1/conversations/{conversation.id}/escalate", headers=bearer(bot_token), json=body)
    assert response.status_code == 422 and response.json["error"] == "validation_failed"
    assert response.json["details"]
    assert snapshot() == before


def test_escalating_an_unknown_conversation_is_404(client, bot_token):
    response = client.post("/api/v1/conversations/c_nope/escalate", headers=bearer(bot_token), json={"reason": "bot"})
    assert response.status_code == 404


def test_an_agent_cannot_read_a_conversation_held_by_the_bot(client, conversation):
    token = ApiToken.issue("Ana", "agent", agent_id="a_ana")[1]
    response = client.get(f"/api/v1/conversations/{conversation.id}", headers=bearer(token))
    assert response.status_code == 403
    listed = client.get("/api/v1/conversations", headers=bearer(token)).json["items"]
    assert listed == []


def test_an_agent_sees_the_pending_conversations_of_their_groups_only(app, client, work):
    from routing.agents import create_agent
    customer_says(app, ASK_FOR_A_HUMAN)
    work()
    support = create_agent("Ana", "agent", ["support"], 3)[1]
    billing = create_agent("Bo", "agent", ["billing"], 3)[1]
    listed = client.get("/api/v1/conversations", headers=bearer(support)).json["items"]
    assert [c["state"] for c in listed] == ["PENDING_AGENT"]
    assert client.get("/api/v1/conversations", headers=bearer(billing)).json["items"] == []
    response = client.get(f"/api/v1/conversations/{listed[0]['id']}", headers=bearer(billing))
    assert response.status_code == 403


def test_a_revoked_token_is_401(client, conversation):
    from models import utcnow
    row, token = ApiToken.issue("old", "bot")
    ApiToken.update(revoked_at=utcnow()).where(ApiToken.id == row.id).execute()
    assert client.get(f"/api/v1/conversations/{conversation.id}", headers=bearer(token)).status_code == 401
