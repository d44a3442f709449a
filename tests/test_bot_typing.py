"""The bot is visibly working (issue 8, part 6): when the AI branch gets a turn,
Baton marks the customer's message read and shows WhatsApp's typing indicator,
once per turn, through the same outbound lane as everything it sends (so
before the answer, and within the number's rate); agents watching see the bot
typing. BOT_TYPING_INDICATOR=false turns it off."""
from __future__ import annotations

import json

from redis import Redis

from models import BotTurn, Message
from routing.dispatch import typing_key
from routing.live import channel
from tests.support import CUSTOMER, bearer, customer_says, settle
from tests.test_takeover_and_recovery import post, wasender_app, wasender_message  # noqa: F401  (fixture)


def cloud_app(app_factory, graph_api, n8n, **settings):
    return app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                       WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v",
                       N8N_BOT_URL=n8n.url_for("baton-bot"), **settings)


def graph_calls(graph_api) -> list[dict]:
    return [body for _, path, _, body in graph_api.requests if path.endswith("/messages")]


def typing_calls(graph_api) -> list[dict]:
    return [b for b in graph_calls(graph_api) if b.get("status") == "read"]


def the_bot_answers(app, text: str) -> None:
    from models import ApiToken

    turn = BotTurn.select().order_by(BotTurn.created_at.desc()).first()
    token = ApiToken.issue("bot", "bot")[1]
    answer = app.test_client().post("/api/v1/bot/replies", headers=bearer(token), json={
        "conversation_id": turn.conversation_id, "turn_id": turn.id, "text": text})
    assert answer.status_code in (200, 202), answer.json
    settle(app)


def test_each_ai_turn_marks_the_message_read_and_shows_typing_once_before_the_answer(app_factory, graph_api, n8n):
    app = cloud_app(app_factory, graph_api, n8n)
    rt = app.extensions["baton"]
    listener = Redis.from_url(rt.settings.REDIS_URL).pubsub()
    listener.subscribe(channel(rt.settings.REDIS_PREFIX))
    customer_says(app, "hi there", message_id="wamid.HI")
    settle(app)
    assert typing_calls(graph_api) == [{"messaging_product": "whatsapp", "status": "read",
                                        "message_id": "wamid.HI", "typing_indicator": {"type": "text"}}]
    the_bot_answers(app, "Hello! How can I help?")
    calls = graph_calls(graph_api)
    assert [c.get("status") or c["text"]["body"] for c in calls] == ["read", "Hello! How can I help?"]

    customer_says(app, "what are your hours?", message_id="wamid.HOURS")
    settle(app)
    settle(app)                                     # nothing more to do: still once for this turn
    assert [c["message_id"] for c in typing_calls(graph_api)] == ["wamid.HI", "wamid.HOURS"]

    events = []
    while (item := listener.get_message(timeout=0.2)) is not None:
        if item["type"] == "message":
            events.append(json.loads(item["data"]))
    bot_typing = [e for e in events if e["type"] == "typing" and e["data"].get("bot")]
    assert len(bot_typing) == 2 and all(e["data"]["typing"] for e in bot_typing)


def test_no_typing_indicator_when_turned_off(app_factory, graph_api, n8n):
    app = cloud_app(app_factory, graph_api, n8n, BOT_TYPING_INDICATOR=False)
    customer_says(app, "hi there")
    settle(app)
    assert typing_calls(graph_api) == []
    assert BotTurn.select().count() == 1


def test_no_typing_indicator_when_the_answer_is_already_waiting(app_factory, graph_api, n8n):
    from jobs.context import set_runtime
    from jobs.drain import drain

    app = cloud_app(app_factory, graph_api, n8n)
    rt = app.extensions["baton"]
    set_runtime(rt)
    customer_says(app, "hi there", message_id="wamid.FAST")
    rt.feeder.flush()
    [message] = Message.select().where(Message.direction == "in")
    assert drain([message.conversation_id]) == {}    # routed: the turn is out, the indicator waits for the lane
    assert rt.redis.get(typing_key(rt.settings.REDIS_PREFIX, message.conversation_id)) == b"wamid.FAST"
    the_bot_answers(app, "Already here")    # the answer beats the lane: no indicator before it
    assert typing_calls(graph_api) == []
    assert [c["text"]["body"] for c in graph_calls(graph_api)] == ["Already here"]


def test_wasender_shows_composing_to_the_customer(app_factory, wasender_api, n8n):
    from tests.test_takeover_and_recovery import SECRET

    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=SECRET,
                      WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url,
                      N8N_BOT_URL=n8n.url_for("baton-bot"))
    assert post(app, wasender_message("hello", wa_id=CUSTOMER)).json["messages"] == 1
    settle(app)
    presence = [body for _, path, _, body in wasender_api.requests if path == "/api/send-presence-update"]
    assert presence == [{"jid": f"{CUSTOMER}@s.whatsapp.net", "type": "composing"}]


def test_answers_that_are_only_typing_indicators_open_no_write_transaction(app, monkeypatch):
    """A typing indicator's answer writes nothing: recording it must not queue for
    SQLite's write lock behind the routing (the reply it announces waits meanwhile)."""
    from concurrent.futures import Future

    import jobs.send as send

    opened = []
    monkeypatch.setattr(send, "write_transaction", lambda: opened.append(1))
    done = Future()
    done.set_result(None)
    slot = send.Slot("c_1", lock=None, renewed=0.0, future=done)
    send.Sender(app.extensions["baton"], 1)._record([slot])
    assert opened == []
