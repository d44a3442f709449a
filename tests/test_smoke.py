from tests.support import text_webhook


def test_customer_says_hi_and_the_builtin_bot_answers(client, rt, work):
    raw, headers = text_webhook("15551234567", "hi")
    response = client.post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json == {"messages": 1, "statuses": 0, "duplicates": 0, "ignored": 0}
    work()
    from models import OutboxEntry, Message
    rows = list(OutboxEntry.select())
    assert len(rows) == 1
    print(rows[0].payload)
    print([ (m.direction, m.sender, m.routed_to, m.status, m.text) for m in Message.select()])
