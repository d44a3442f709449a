"""Sending through Meta's Cloud API (a fake Graph API over real HTTP): in
order, retried on rate limits and 5xx, failed for good on permanent errors,
refused up front outside the 24-hour window."""
import hashlib
import hmac
import time

import orjson
import pytest

from models import Message
from tests.support import CUSTOMER, customer_says
from tests.support import TEST_APP_SECRET, bearer, settle_until


@pytest.fixture
def cloud_app(app_factory, graph_api):
    return app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                       WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v")


def settle_outbound(app):
    """Run jobs until no reply waits to be sent (retries after their backoff included)."""
    settle_until(app, lambda: not Message.select().where(Message.status == "queued").exists(),
                 what="outbound to settle")


def sent_bodies(graph_api):
    return [body for method, path, headers, body in graph_api.requests if path.endswith("/messages")]


def hi_answered_while_meta_refuses(cloud_app, graph_api, times: int, status: int, code: int, message: str):
    """Meta answers the next `times` sends with `status` (Graph error `code`); the customer
    says hi and the lanes run until the bot's answer is sent or given up: that answer."""
    graph_api.fail_next(times, status, {"error": {"message": message, "code": code}})
    customer_says(cloud_app, "hi")
    settle_outbound(cloud_app)
    return Message.get(Message.direction == "out")


def test_the_bots_answer_goes_to_the_graph_api_with_the_access_token(cloud_app, graph_api):
    customer_says(cloud_app, "hi")
    settle_outbound(cloud_app)
    [body] = sent_bodies(graph_api)
    assert body["to"] == CUSTOMER and body["type"] == "text"
    [(method, path, headers, _)] = [r for r in graph_api.requests if r[1].endswith("/messages")]
    assert path == "/v23.0/sandbox-1/messages" and headers["Authorization"] == f"Bearer {graph_api.access_token}"
    reply = Message.get(Message.direction == "out")
    assert reply.status == "sent" and reply.provider_message_id.startswith("wamid.")


def test_a_rate_limited_send_is_retried_and_then_delivered(cloud_app, graph_api, fast_retries):
    reply = hi_answered_while_meta_refuses(cloud_app, graph_api, 2, 429, 130429, "(#130429) Rate limit hit")
    assert (reply.status, reply.attempts) == ("sent", 3)
    assert len(sent_bodies(graph_api)) == 3


def test_a_server_error_is_retried(cloud_app, graph_api, fast_retries):
    reply = hi_answered_while_meta_refuses(cloud_app, graph_api, 1, 500, 131016, "Service temporarily unavailable")
    assert reply.status == "sent"


def test_a_permanent_refusal_fails_the_message_with_metas_code(cloud_app, graph_api, fast_retries):
    reply = hi_answered_while_meta_refuses(cloud_app, graph_api, 1, 400, 131026, "(#131026) Message undeliverable")
    assert (reply.status, reply.error_code) == ("failed", 131026)
    assert len(sent_bodies(graph_api)) == 1


def test_replies_to_one_customer_leave_in_the_order_they_were_queued(cloud_app, graph_api, fast_retries):
    from models import ApiToken, BotTurn

    customer_says(cloud_app, "hi")
    settle_outbound(cloud_app)
    turn = BotTurn.get()
    token = ApiToken.issue("bot", "bot")[1]
    graph_api.fail_next(1, 429, {"error": {"message": "(#131056) pair rate limit", "code": 131056}})
    client = cloud_app.test_client()
    for text in ("first bubble", "second bubble", "third bubble"):
        response = client.post("/api/v1/bot/replies", headers=bearer(token),
                               json={"conversation_id": turn.conversation_id, "turn_id": turn.id, "text": text})
        assert response.status_code == 202
    settle_outbound(cloud_app)
    texts = [b["text"]["body"] for b in sent_bodies(graph_api)][1:]     # after the menu
    assert texts == ["first bubble", "first bubble", "second bubble", "third bubble"]


def test_free_form_text_outside_the_24_hour_window_is_refused_without_calling_meta(cloud_app, graph_api):
    customer_says(cloud_app, "hi", timestamp=int(time.time()) - 25 * 3600)
    settle_outbound(cloud_app)
    reply = Message.get(Message.direction == "out")
    assert (reply.status, reply.error_code) == ("failed", 131047)
    assert sent_bodies(graph_api) == []


def test_delivery_statuses_from_meta_update_the_sent_message(cloud_app, graph_api):
    customer_says(cloud_app, "hi")
    settle_outbound(cloud_app)
    reply = Message.get(Message.direction == "out")
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "sandbox-1"},
                                       "statuses": [{"id": reply.provider_message_id, "status": "delivered",
                                                     "timestamp": str(int(time.time())),
                                                     "recipient_id": CUSTOMER}]}}]}]})
    signature = hmac.new(TEST_APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = cloud_app.test_client().post("/webhooks/whatsapp", data=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"})
    assert response.json["statuses"] == 1
    assert Message.get_by_id(reply.id).status == "delivered"



@pytest.mark.parametrize("status, body, code", [
    (400, "<html><body>Bad Request</body></html>", 400),                    # not Graph's JSON at all
    (403, {"error": {"message": "(#10) Permission denied", "code": 10, "type": "OAuthException"}}, 10),
    (400, {"error": {"message": "(#999999) Something new", "code": 999999}}, 999999),   # a code nobody knows
    (418, {"unexpected": "shape"}, 418),
])
def test_an_error_body_baton_does_not_know_fails_the_message_with_the_raw_code(cloud_app, graph_api, fast_retries,
                                                                               status, body, code):
    reply = hi_answered_while_meta_refuses_with(cloud_app, graph_api, status, body)
    assert (reply.status, reply.error_code, reply.attempts) == ("failed", code, 1)
    assert reply.error_title


def hi_answered_while_meta_refuses_with(cloud_app, graph_api, status: int, body):
    graph_api.fail_next(1, status, body)
    customer_says(cloud_app, "hi")
    settle_outbound(cloud_app)
    return Message.get(Message.direction == "out")


# -- the pump's budget ---------------------------------------------------------------------------

@pytest.fixture
def slow_cloud_app(app_factory):
    """The Cloud API adapter against a fake Graph API taking 100 ms a send; pumps get 150 ms."""
    from tests.fakes.graph_api import FakeGraphApi, Realism

    with FakeGraphApi(realism=Realism(latency=(0.1, 0.1))) as fake:
        yield app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=fake.access_token,
                          WHATSAPP_API_BASE=fake.api_base, WHATSAPP_VERIFY_TOKEN="v", PUMP_BUDGET_SECONDS=0.15)


def five_bubbles_and_their_pump(app):
    """The bot answers a customer with five bubbles; returns the pump job's claim (the job
    itself is taken off the queue: the test runs it)."""
    from jobs.context import set_runtime
    from models import ApiToken, BotTurn
    from routing.lanes import PumpClaim

    customer_says(app, "hi")
    settle_outbound(app)
    turn = BotTurn.get()
    token = ApiToken.issue("bot", "bot")[1]
    for n in range(5):
        answer = app.test_client().post("/api/v1/bot/replies", headers=bearer(token), json={
            "conversation_id": turn.conversation_id, "turn_id": turn.id, "text": f"bubble {n}"})
        assert answer.status_code == 202
    rt = app.extensions["baton"]
    set_runtime(rt)
    [job] = rt.queues["outbound"].jobs
    job.delete()
    lane, token, _moves = job.args
    return rt, PumpClaim(lane, token)


def test_a_pump_past_its_budget_hands_over_at_once_when_other_jobs_wait_for_a_worker(slow_cloud_app):
    """Past its budget, with other work waiting for the worker, the pump queues the next pump
    job at once and only finishes the call in flight: the conversation goes back to the lane
    (the old pump used to go on sending it, one call at a time, before anyone took over)."""
    from jobs.send import pump_outbound

    rt, claim = five_bubbles_and_their_pump(slow_cloud_app)
    rt.queues["default"].enqueue("builtins.len", "other work")
    sent = pump_outbound(claim)
    assert 1 <= sent < 5
    assert rt.lanes.depth("outbound") == 1 and rt.queues["outbound"].count == 1
    assert Message.select().where(Message.status == "queued").count() == 5 - sent
    rt.queues["default"].empty()
    settle_outbound(slow_cloud_app)
    assert [m.text for m in Message.select().where(Message.direction == "out").order_by(Message.id)][1:] == [
        f"bubble {n}" for n in range(5)]


def test_a_pump_past_its_budget_goes_on_while_no_other_job_waits(slow_cloud_app):
    from jobs.send import pump_outbound

    rt, claim = five_bubbles_and_their_pump(slow_cloud_app)
    assert pump_outbound(claim) == 5
    assert rt.queues["outbound"].count == 0
    assert not Message.select().where(Message.status == "queued").exists()


def test_a_pump_nobody_waits_for_still_hands_over_in_time(slow_cloud_app, monkeypatch):
    """Well before RQ's job timeout: the next pump job takes over, the order holds."""
    from jobs import send

    monkeypatch.setattr(send, "KEEP_GOING_SECONDS", 0.2)
    rt, claim = five_bubbles_and_their_pump(slow_cloud_app)
    sent = send.pump_outbound(claim)
    assert 2 <= sent < 5
    assert rt.lanes.depth("outbound") == 1 and rt.queues["outbound"].count == 1
    settle_outbound(slow_cloud_app)
    assert [m.text for m in Message.select().where(Message.direction == "out").order_by(Message.id)][1:] == [
        f"bubble {n}" for n in range(5)]
