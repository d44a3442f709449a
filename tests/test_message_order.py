"""Messages are shown in the order Baton handled them: every message gets a
`seq`, strictly increasing per conversation, handed out in the transaction
that stores it. WhatsApp's timestamps are whole seconds, so `sent_at` could
not tell a customer's message from an agent's reply of the same second.

The conversation list shows each conversation's last message (one query for
the page, whatever its size)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import requests

from models import Conversation, Message
from models.base import epoch_seconds, parse_time
from tests.support import Team, bearer, customer_says, settle, text_webhook, wait_until, waiting_customer
from tests.test_migrations import busy_database, captured_sql, plan  # noqa: F401  (fixture)
from tests.test_status_updates import Listener, statuses_arrive

DANA = "15557771001"


def history(app, token: str, conversation_id: str, **params) -> list[dict]:
    response = app.test_client().get(f"/api/v1/conversations/{conversation_id}/messages",
                                     query_string={"limit": 200, **params}, headers=bearer(token))
    assert response.status_code == 200, response.json
    return response.json["items"]


def heard(listener: Listener, kind: str) -> list[dict]:
    """The `kind` events published so far, in order."""
    events = []
    while (event := listener.next(timeout=0.3)) is not None:
        if event["type"] == kind:
            events.append(event["data"])
    return events


def early_in_a_second() -> None:
    """Wait until the clock is 100-600 ms into a second: a reply sent now has a
    later `sent_at` than any WhatsApp timestamp (whole seconds) of this second."""
    while not 0.1 <= datetime.now().microsecond / 1e6 <= 0.6:
        time.sleep(0.01)


# -- the same second ------------------------------------------------------------------------------

def test_a_customer_message_in_the_same_second_as_an_agent_reply_comes_after_it_in_the_api_and_live(app):
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app, wa_id=DANA)
    assert team.act("ana", "claim", conv.id).status_code == 200
    listener = Listener(app.extensions["baton"])
    try:
        early_in_a_second()
        answer = team.act("ana", "messages", conv.id, {"text": "Hi Dana, Ana here."})
        assert answer.status_code == 202, answer.json
        reply = answer.json["message"]
        same_second = int(epoch_seconds(parse_time(reply["sent_at"])))
        customer_says(app, "Thanks!", wa_id=DANA, timestamp=same_second, message_id="wamid.same-second")
        settle(app)

        # Written in the same second, and by the clock even before the reply…
        items = history(app, team.token["ana"], conv.id)
        customer = next(m for m in items if m["text"] == "Thanks!")
        assert parse_time(customer["sent_at"]) < parse_time(reply["sent_at"])
        # …but handled after it: listed after it.
        assert [m["text"] for m in items][-2:] == ["Hi Dana, Ana here.", "Thanks!"]
        seqs = [m["seq"] for m in items]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert reply["seq"] < customer["seq"]

        # Live: each message.created carries the seq it has over REST.
        created = {m["id"]: m["seq"] for m in heard(listener, "message.created")}
        assert created[reply["id"]] == reply["seq"] and created[customer["id"]] == customer["seq"]

        # A status tick (message.updated) carries it too.
        sent = Message.get_by_id(reply["id"])
        assert sent.provider_message_id, "the outbound lane has sent the reply"
        statuses_arrive(app, sent.provider_message_id, "delivered")
        (updated,) = heard(listener, "message.updated")
        assert (updated["id"], updated["seq"], updated["status"]) == (reply["id"], reply["seq"], "delivered")
    finally:
        listener.close()


def test_after_and_before_page_by_seq_and_still_take_a_time(app):
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app, wa_id=DANA, timestamp=int(time.time()) - 60)
    assert team.act("ana", "claim", conv.id).status_code == 200
    # Past the second of everything said so far (the handoff notice): wait for the clock, not a guess.
    said = max(epoch_seconds(m.sent_at) for m in Message.select().where(Message.conversation == conv.id))
    wait_until(lambda: time.time() >= int(said) + 1, timeout=3, interval=0.01, what="the next second")
    early_in_a_second()
    reply = team.act("ana", "messages", conv.id, {"text": "One moment."}).json["message"]
    second = int(epoch_seconds(parse_time(reply["sent_at"])))
    customer_says(app, "ok", wa_id=DANA, timestamp=second, message_id="wamid.ok")
    settle(app)
    token = team.token["ana"]
    everything = history(app, token, conv.id)
    texts = [m["text"] for m in everything]

    assert [m["text"] for m in history(app, token, conv.id, after=reply["id"])] == ["ok"]
    assert [m["text"] for m in history(app, token, conv.id, after=str(reply["seq"]))] == ["ok"]
    assert [m["text"] for m in history(app, token, conv.id, before=reply["id"])] == texts[:texts.index("One moment.")]
    # A bare time: what was written at that instant or since, still in seq order.
    at = datetime.utcfromtimestamp(second).isoformat() + "Z"
    assert [m["text"] for m in history(app, token, conv.id, after=at)] == ["One moment.", "ok"]
    # Paging with next_cursor walks the history in seq order.
    walked, cursor = [], None
    while True:
        params = {"limit": 1, **({"after": cursor} if cursor else {})}
        page = app.test_client().get(f"/api/v1/conversations/{conv.id}/messages", query_string=params,
                                     headers=bearer(token)).json
        walked += [m["text"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == texts


# -- under concurrency ------------------------------------------------------------------------------

def test_seq_is_strictly_increasing_under_concurrent_webhooks_and_agent_replies(app, live_server):
    """Webhooks (some delivered twice at once) and agent replies race on one
    conversation over real HTTP, a thread per request, each its own database
    connection; routing runs meanwhile. Every message gets its own number, the
    numbers have no holes, and what one client sent in order is numbered in order."""
    team = Team(app)
    team.add("ana", max_concurrent=50)
    conv = waiting_customer(app, wa_id=DANA)
    assert team.act("ana", "claim", conv.id).status_code == 200
    writers, per_writer, repliers, per_replier = 4, 15, 2, 10

    def customer(w: int) -> list[str]:
        sent = []
        for i in range(per_writer):
            raw, headers = text_webhook(DANA, f"w{w}-{i}", message_id=f"wamid.w{w}-{i}")
            for _ in range(2 if i % 5 == 0 else 1):          # every fifth delivered twice, back to back
                response = requests.post(f"{live_server}/webhooks/whatsapp", data=raw, headers=headers, timeout=30)
                assert response.status_code == 200, response.text
            sent.append(f"w{w}-{i}")
        return sent

    def agent(r: int) -> list[str]:
        sent = []
        for i in range(per_replier):
            text = f"r{r}-{i}"
            for _ in range(20):                               # conversation_busy: try again, like a console
                response = requests.post(f"{live_server}/api/v1/conversations/{conv.id}/messages",
                                         json={"text": text}, headers=bearer(team.token["ana"]), timeout=30)
                if response.status_code != 503:
                    break
            assert response.status_code == 202, response.text
            sent.append(text)
        return sent

    with ThreadPoolExecutor(writers + repliers) as pool:
        futures = [pool.submit(customer, w) for w in range(writers)] + \
                  [pool.submit(agent, r) for r in range(repliers)]
        while not all(f.done() for f in futures):            # routing runs meanwhile, here
            settle(app)
        sequences = [f.result() for f in futures]
    settle(app)

    rows = list(Message.select(Message.text, Message.seq).where(Message.conversation == conv.id)
                .order_by(Message.seq))
    seqs = [row.seq for row in rows]
    assert seqs == list(range(1, len(rows) + 1))                  # unique, increasing, no holes
    assert Conversation.get_by_id(conv.id).message_seq == len(rows)
    seq_of = {row.text: row.seq for row in rows}
    for sent in sequences:                                        # one client's messages keep its order
        assert [seq_of[text] for text in sent] == sorted(seq_of[text] for text in sent)
    assert len([row for row in rows if row.text and row.text.startswith("w")]) == writers * per_writer


@pytest.mark.processes
def test_seq_is_strictly_increasing_across_web_and_worker_processes(app, start_baton):
    """The same race on real processes: gunicorn (2 workers) takes the webhooks
    and the replies, 2 RQ workers route meanwhile."""
    from tests.harness import post_all

    procs = start_baton(SENTIMENT_LANGUAGES="")
    procs.wait_ready()
    team = Team(app)
    team.add("ana", max_concurrent=50)
    (asked,) = post_all(procs.url, [text_webhook(DANA, "I want to talk to a human", message_id="wamid.ask")])
    assert asked.status_code == 200, asked.text
    conv = procs.wait_until(lambda: Conversation.get_or_none(Conversation.state == "PENDING_AGENT"),
                            what="the customer to wait for a human")
    claimed = requests.post(f"{procs.url}/api/v1/conversations/{conv.id}/claim",
                            headers=bearer(team.token["ana"]), timeout=30)
    assert claimed.status_code == 200, claimed.text

    def customer(w: int) -> list[str]:
        sent = []
        with requests.Session() as session:
            for i in range(20):
                raw, headers = text_webhook(DANA, f"w{w}-{i}", message_id=f"wamid.p{w}-{i}")
                response = session.post(f"{procs.url}/webhooks/whatsapp", data=raw, headers=headers, timeout=30)
                assert response.status_code == 200, response.text
                sent.append(f"w{w}-{i}")
        return sent

    def agent(r: int) -> list[str]:
        sent = []
        with requests.Session() as session:
            for i in range(10):
                for _ in range(20):
                    response = session.post(f"{procs.url}/api/v1/conversations/{conv.id}/messages",
                                            json={"text": f"r{r}-{i}"}, headers=bearer(team.token["ana"]),
                                            timeout=30)
                    if response.status_code != 503:
                        break
                assert response.status_code == 202, response.text
                sent.append(f"r{r}-{i}")
        return sent

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(customer, w) for w in range(4)] + [pool.submit(agent, r) for r in range(2)]
        sequences = [f.result(timeout=180) for f in futures]
    procs.settle_quiet(app.extensions["baton"])

    rows = list(Message.select(Message.text, Message.seq).where(Message.conversation == conv.id)
                .order_by(Message.seq))
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert Conversation.get_by_id(conv.id).message_seq == len(rows)
    seq_of = {row.text: row.seq for row in rows}
    for sent in sequences:
        assert [seq_of[text] for text in sent] == sorted(seq_of[text] for text in sent)


# -- the list's preview -------------------------------------------------------------------------------

def test_the_list_shows_each_conversations_last_message(app, work, admin_token):
    customer_says(app, "hello", wa_id="15557771002")
    work()                                                        # the bot answers
    customer_says(app, "x" * 500, wa_id="15557771003")
    client = app.test_client()

    items = {c["contact"]["wa_id"]: c for c in
             client.get("/api/v1/conversations", headers=bearer(admin_token)).json["items"]}

    answered = items["15557771002"]["last_message"]
    bot = Message.select().where(Message.direction == "out").order_by(Message.seq.desc()).get()
    assert (answered["id"], answered["direction"], answered["sender"], answered["text"]) == (
        bot.id, "out", "bot", bot.text)
    long = items["15557771003"]["last_message"]
    assert (long["direction"], long["sender"], long["type"]) == ("in", "user", "text")
    assert len(long["text"]) == 200 and long["text"].endswith("…")
    assert long["sent_at"].endswith("Z") and long["seq"] == 1


def test_a_duplicate_delivery_leaves_the_preview_and_the_numbering_alone(app, admin_token):
    customer_says(app, "first", wa_id="15557771004", message_id="wamid.first")
    customer_says(app, "second", wa_id="15557771004", message_id="wamid.second")
    assert customer_says(app, "first", wa_id="15557771004", message_id="wamid.first")["duplicates"] == 1
    (item,) = app.test_client().get("/api/v1/conversations", headers=bearer(admin_token)).json["items"]
    assert (item["last_message"]["text"], item["last_message"]["seq"]) == ("second", 2)
    customer_says(app, "third", wa_id="15557771004", message_id="wamid.third")
    assert [m.seq for m in Message.select().order_by(Message.seq)] == [1, 2, 3]


def test_the_list_reads_every_preview_of_a_page_in_one_query(app, admin_token):
    def statements_for_a_page() -> int:
        with captured_sql() as statements:
            response = app.test_client().get("/api/v1/conversations?limit=200", headers=bearer(admin_token))
        assert response.status_code == 200
        return len([sql for sql, _ in statements if 'from "message"' in sql.lower()])

    customer_says(app, "hello", wa_id="15557771010")
    one = statements_for_a_page()
    for n in range(11, 20):
        customer_says(app, "hello", wa_id=f"155577710{n}")
    assert statements_for_a_page() == one == 1


def test_a_conversation_without_messages_has_no_preview(app, admin_token):
    customer_says(app, "hello", wa_id="15557771005")
    Message.delete().execute()
    Conversation.update(message_seq=0).execute()
    (item,) = app.test_client().get("/api/v1/conversations", headers=bearer(admin_token)).json["items"]
    assert item["last_message"] is None


def test_the_preview_and_history_queries_use_the_seq_index(busy_database):  # noqa: F811
    from blueprints.conversations import last_messages
    from models import ALL_MODELS

    with busy_database.bind_ctx(ALL_MODELS):
        page = list(Conversation.select().order_by(Conversation.id).limit(200))
        for conv in page:
            conv.message_seq = 2
        with captured_sql() as statements:
            previews = last_messages(page)
        assert len(previews) == len(page)
        assert "message_conversation_id_seq" in plan(busy_database, *statements[-1])
        history_page = (Message.select().where((Message.conversation == "c00001") & (Message.seq > 1))
                        .order_by(Message.seq).limit(201))
        assert "message_conversation_id_seq" in plan(busy_database, *history_page.sql())


def test_a_message_created_through_the_orm_is_numbered_and_saving_it_again_keeps_its_number(app):
    customer_says(app, "hello", wa_id="15557771020")
    conv = Conversation.get()
    first = Message.get()
    made = Message.create(conversation=conv.id, channel=conv.channel_id, direction="out", sender="system",
                          type="text", text="noted", sent_at=first.sent_at, received_at=first.received_at,
                          routed_to="none", status="queued", attempts=0)
    assert (first.seq, made.seq, Conversation.get_by_id(conv.id).message_seq) == (1, 2, 2)
    partial = Message.select(Message.id, Message.conversation).where(Message.id == made.id).get()
    partial.text = "noted!"
    partial.save(only=[Message.text])
    assert (Message.get_by_id(made.id).seq, Conversation.get_by_id(conv.id).message_seq) == (2, 2)


def test_messages_moved_by_a_merge_are_numbered_again_in_the_order_they_were_stored(app):
    """A contact merge (one customer known by two conversations) moves one
    conversation's messages into the other: the survivor's history is numbered
    again, both interleaved in the order Baton stored them, and goes on from there."""
    from models import write_transaction
    from models.message import move_messages

    for wa_id, text in (("15557771030", "old 1"), ("15557771031", "new 1"), ("15557771030", "old 2"),
                        ("15557771031", "new 2")):
        customer_says(app, text, wa_id=wa_id)
    gone, kept = (Message.get(Message.text == "old 1").conversation_id,
                  Message.get(Message.text == "new 1").conversation_id)

    with write_transaction():
        assert move_messages(gone, kept) == 2

    rows = list(Message.select().where(Message.conversation == kept).order_by(Message.seq))
    assert [(m.text, m.seq) for m in rows] == [("old 1", 1), ("new 1", 2), ("old 2", 3), ("new 2", 4)]
    assert (Conversation.get_by_id(kept).message_seq, Conversation.get_by_id(gone).message_seq) == (4, 0)
    customer_says(app, "new 3", wa_id="15557771031")
    assert Message.get(Message.text == "new 3").seq == 5
