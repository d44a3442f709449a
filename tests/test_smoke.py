"""The README's first story: a customer says hi, then asks for a human."""
from models import Conversation, Event, Message, OutboxEntry
from tests.support import ASK_FOR_A_HUMAN, CUSTOMER, customer_says


def test_customer_says_hi_and_the_builtin_bot_answers_with_its_menu(app, work):
    assert customer_says(app, "hi") == {"messages": 1, "statuses": 0, "duplicates": 0, "ignored": 0}
    work()
    [sent] = OutboxEntry.select()
    assert sent.to == CUSTOMER and "Talk to a human" in sent.payload["text"]["body"]
    inbound = Message.get(Message.direction == "in")
    assert inbound.routed_to == "bot"


def test_then_asking_for_a_human_hands_off_with_one_notice(app, work):
    customer_says(app, "hi")
    work()
    customer_says(app, ASK_FOR_A_HUMAN)
    work()
    conv = Conversation.get()
    assert (conv.state, conv.escalation_reason) == ("PENDING_AGENT", "explicit_request")
    texts = [e.payload["text"]["body"] for e in OutboxEntry.select().order_by(OutboxEntry.created_at)]
    assert len(texts) == 2 and "connecting you" in texts[1]
    [handoff] = Event.select().where(Event.to_state == "PENDING_AGENT")
    assert (handoff.from_state, handoff.reason, handoff.actor) == ("BOT_CONTROLLED", "explicit_request", "system")


def test_json_answers_say_utf8(client):
    assert client.get("/healthz").headers["Content-Type"] == "application/json; charset=utf-8"
