"""Webhooks in: what gets recorded, what is refused, and that refusals change nothing."""
from datetime import datetime, timedelta

import orjson
import pytest

from models import Contact, Conversation, Message, UnsupportedUpdate, utcnow
from tests.fixtures.samples import (
    CORPUS,
    cloud_headers,
    corpus_files,
    needs_corpus,
    sample,
    signature_vectors,
    vector_id,
)
from tests.support import TEST_APP_SECRET, text_webhook

# Third-party samples beside the repository: an extra check, skipped when absent.
CORPUS_CLOUD_SAMPLES = corpus_files("cloud_api", "*.json")


def sign(raw: bytes, secret: str = TEST_APP_SECRET) -> dict:
    return cloud_headers(raw, secret)


def nothing_stored():
    return Message.select().count() == 0 and Conversation.select().count() == 0 and \
        UnsupportedUpdate.select().count() == 0


def test_a_signed_text_is_recorded_once_with_its_payload_timestamp(client):
    raw, headers = text_webhook("15551230001", "hello", message_id="wamid.A1", timestamp=1_800_000_000)
    response = client.post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200
    message = Message.get()
    assert (message.provider_message_id, message.text, message.direction, message.routed_to) == \
        ("wamid.A1", "hello", "in", None)
    assert message.sent_at == datetime(2027, 1, 15, 8, 0, 0)


def test_the_same_message_delivered_twice_is_stored_once_and_counted_as_duplicate(client):
    raw, headers = text_webhook("15551230001", "hello", message_id="wamid.DUP")
    first = client.post("/webhooks/whatsapp", data=raw, headers=headers)
    second = client.post("/webhooks/whatsapp", data=raw, headers=headers)
    assert first.json["messages"] == 1 and first.json["duplicates"] == 0
    assert second.json == {"messages": 0, "statuses": 0, "duplicates": 1, "ignored": 0}
    assert Message.select().count() == 1


def test_the_customers_profile_name_is_kept_and_updated(client):
    for name in ("Ana", "Ana María"):
        raw, headers = text_webhook("15551230002", "hi", name=name)
        client.post("/webhooks/whatsapp", data=raw, headers=headers)
    assert [c.name for c in Contact.select()] == ["Ana María"]
    assert Conversation.select().count() == 1


def test_missing_signature_is_refused_and_nothing_is_stored(client):
    raw, headers = text_webhook("15551230001", "hello")
    del headers["X-Hub-Signature-256"]
    response = client.post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_signature"
    assert nothing_stored()


def test_a_signature_made_with_another_secret_is_refused(client):
    raw, _ = text_webhook("15551230001", "hello")
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw, "not-the-secret"))
    assert response.status_code == 401
    assert nothing_stored()


def test_a_body_changed_after_signing_is_refused(client):
    raw, headers = text_webhook("15551230001", "hello")
    response = client.post("/webhooks/whatsapp", data=raw.replace(b"hello", b"hellO"), headers=headers)
    assert response.status_code == 401
    assert nothing_stored()


def test_a_signed_body_that_is_not_json_is_a_400(client):
    raw = b"this is not json"
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.status_code == 400
    assert set(response.json) == {"error", "message", "details"}
    assert nothing_stored()


def test_a_signed_json_body_in_the_wrong_envelope_is_a_400(client):
    raw = orjson.dumps({"object": "instagram", "entry": []})
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.status_code == 400
    assert nothing_stored()


@needs_corpus
def test_the_malformed_corpus_sample_is_a_400(client):
    raw = (CORPUS / "cloud_api" / "malformed" / "bindambc__textMessageStatusRead.json").read_bytes()
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.status_code == 400
    assert nothing_stored()


def test_a_body_over_3_mib_is_a_413(client):
    raw = b'{"object":"whatsapp_business_account","entry":[],"pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"
    assert nothing_stored()


@needs_corpus
@pytest.mark.parametrize("path", CORPUS_CLOUD_SAMPLES, ids=[p.name for p in CORPUS_CLOUD_SAMPLES])
def test_every_cloud_api_corpus_sample_is_accepted(client, path):
    raw = path.read_bytes()
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.status_code == 200, response.json
    counts = response.json
    assert sum(counts.values()) >= 1


@pytest.mark.parametrize("path", signature_vectors(), ids=vector_id)
def test_a_known_answer_signature_vector_is_accepted(app_factory, path):
    vector = orjson.loads(path.read_bytes())
    app = app_factory(WHATSAPP_APP_SECRET=vector["app_secret"])
    raw = (path.parent / vector["body_file"]).read_bytes()
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": vector["x_hub_signature_256"]})
    assert response.status_code == 200
    assert response.json["messages"] == 1
    if "expected_text" in vector:
        assert Message.get().text == vector["expected_text"]


def test_unknown_fields_are_recorded_as_unsupported_and_counted_as_ignored(client):
    raw = sample("cloud_api", "field_account_update").raw
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.json["ignored"] == 1 and response.json["messages"] == 0
    assert UnsupportedUpdate.select().count() == 1


def test_an_unsupported_message_type_is_kept_and_counted_as_ignored(client):
    raw = sample("cloud_api", "message_unsupported").raw
    response = client.post("/webhooks/whatsapp", data=raw, headers=sign(raw))
    assert response.json["ignored"] >= 1 and response.json["messages"] == 0
    assert Message.get().type == "unsupported"


def test_statuses_only_move_forward_whatever_order_they_arrive_in(client, rt, work):
    raw, headers = text_webhook("15551230003", "hi")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    work()
    reply = Message.get(Message.direction == "out")
    assert reply.status == "sent"

    def status(name):
        body = {"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{
            "field": "messages", "value": {"messaging_product": "whatsapp",
                                           "metadata": {"phone_number_id": "sandbox-1"},
                                           "statuses": [{"id": reply.provider_message_id, "status": name,
                                                         "timestamp": "1800000000",
                                                         "recipient_id": "15551230003"}]}}]}]}
        raw = orjson.dumps(body)
        return client.post("/webhooks/whatsapp", data=raw, headers=sign(raw)).json

    assert status("read")["statuses"] == 1
    status("delivered")
    status("sent")
    assert Message.get_by_id(reply.id).status == "read"


def test_meta_verification_handshake_echoes_the_challenge(client):
    response = client.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=8675309")
    assert response.status_code == 200
    assert response.data == b"8675309"
    assert response.mimetype == "text/plain"


def test_a_wrong_verify_token_is_refused(client):
    response = client.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")
    assert response.status_code == 403
    assert response.json["error"] == "verification_failed"


def test_the_wasender_path_is_closed_when_another_provider_runs(client):
    response = client.post("/webhooks/wasender", data=b"{}", headers={"X-Webhook-Signature": "x"})
    assert response.status_code == 404
    assert response.json["error"] == "provider_not_enabled"


def test_when_neither_the_database_nor_the_spool_can_record_the_webhook_answers_503_with_retry_after(app_factory):
    # (The database alone down: the webhook is spooled and answered 200, tests/test_fail_open.py.)
    app = app_factory(DATABASE_URL="postgresql://baton@127.0.0.1:1/nowhere", REDIS_URL="redis://127.0.0.1:1/0")
    raw, headers = text_webhook("15551230001", "hello")
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json["error"] == "database_unavailable"


def test_when_redis_is_down_the_message_is_still_recorded_and_acknowledged(app_factory):
    app = app_factory(REDIS_URL="redis://127.0.0.1:1/0")
    raw, headers = text_webhook("15551230001", "hello")
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200
    assert Message.get().routed_to is None      # the sweep routes it once Redis is back


def test_a_message_recorded_while_redis_was_down_is_routed_by_the_sweep(client, rt, work, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from jobs import timers
    from jobs.context import set_runtime

    def down(*args, **kwargs):
        raise RedisConnectionError("down")

    monkeypatch.setattr(rt.lanes, "schedule_inbound_many", down)
    raw, headers = text_webhook("15551230004", "hello")
    assert client.post("/webhooks/whatsapp", data=raw, headers=headers).status_code == 200
    rt.feeder.flush()
    monkeypatch.undo()
    work()
    assert Message.get(Message.direction == "in").routed_to is None      # nothing reached the lane
    set_runtime(rt)
    timers.sweep()                               # not yet: the sweep waits REQUEUE_AFTER for the hand-off
    work()
    assert Message.get(Message.direction == "in").routed_to is None
    # REQUEUE_AFTER passes (the recorded time is moved back rather than slept past).
    Message.update(received_at=utcnow() - timedelta(seconds=rt.settings.REQUEUE_AFTER + 1)).execute()
    timers.sweep()
    work()
    assert Message.get(Message.direction == "in").routed_to == "bot"


def test_a_returning_customer_seen_by_another_web_process_maps_to_the_same_conversation(client, rt):
    raw, headers = text_webhook("15551230009", "hello", name="Ana")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    rt.caches["ingest"].clear()                  # as if another gunicorn worker took the next one
    raw, headers = text_webhook("15551230009", "again", name="Ana B.")
    assert client.post("/webhooks/whatsapp", data=raw, headers=headers).json["messages"] == 1
    assert Conversation.select().count() == 1 and Contact.get().name == "Ana B."
    assert len({m.conversation_id for m in Message.select()}) == 1
