"""Provider webhooks through the adapters' verify() and parse().

Two sources: Baton's own fixtures (tests/fixtures/, always there) for tests that
only need a body of some shape, and the third-party corpus in ../shared/payloads
(override with BATON_PAYLOADS_DIR), an extra check whose tests are skipped when
it is not beside the repository. The table-driven run over our own fixtures is
in test_fixture_samples.py; sending and media downloads are in test_provider_sends.py.
WASender `api__*` corpus files are REST request/response examples, not webhooks:
the adapter answers them with 400 (no `event`, or no `data`), which is what they get here.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from werkzeug.datastructures import EnvironHeaders

from integrations.whatsapp.base import WebhookRejected
from integrations.whatsapp.cloud_api import CloudApiAdapter
from integrations.whatsapp.wasender import WasenderAdapter
from tests.fixtures.samples import (
    CORPUS,
    corpus_files,
    needs_corpus,
    sample,
    signature_vectors,
    vector_id,
)

PAYLOADS = CORPUS
CLOUD = PAYLOADS / "cloud_api"
WASENDER = PAYLOADS / "wasender"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(PAYLOADS)) for p in paths]


CLOUD_SAMPLES = corpus_files("cloud_api", "*.json")
CLOUD_MALFORMED = corpus_files("cloud_api/malformed")
SIGNED_BODIES = corpus_files("cloud_api/signed", "*.body.json")
SIGNED_VECTORS = corpus_files("cloud_api/signed", "*.vector.json")
WASENDER_EVENTS = [p for p in corpus_files("wasender", "*.json") if not p.name.startswith("api__")]
WASENDER_API_EXAMPLES = corpus_files("wasender", "api__*")
WASENDER_MALFORMED = corpus_files("wasender/malformed")

cloud = CloudApiAdapter(app_secret="test-app-secret", verify_token="let-me-in")
wasender = WasenderAdapter(webhook_secret="wasender-secret")


def cloud_sample(name: str):
    return cloud.parse((CLOUD / name).read_bytes())


def wasender_sample(name: str):
    return wasender.parse((WASENDER / name).read_bytes())


def wasender_body(name: str) -> dict:
    return orjson.loads((WASENDER / name).read_bytes())


def our_wasender_body(name: str) -> dict:
    """One of Baton's own WASender fixtures, as a dict to change."""
    return orjson.loads(sample("wasender", name).raw)


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@needs_corpus
def test_every_sample_file_is_claimed_by_a_test():
    claimed = set(CLOUD_SAMPLES + CLOUD_MALFORMED + SIGNED_BODIES + SIGNED_VECTORS
                  + WASENDER_EVENTS + WASENDER_API_EXAMPLES + WASENDER_MALFORMED)
    every = {p for p in PAYLOADS.rglob("*") if p.is_file() and p.suffix != ".md"}
    assert every - claimed == set()


# ---- Cloud API: every sample ------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("path", CLOUD_SAMPLES + SIGNED_BODIES, ids=_ids(CLOUD_SAMPLES + SIGNED_BODIES))
def test_cloud_sample_yields_something_routable_or_ignorable(path):
    parsed = cloud.parse(path.read_bytes())
    assert len(parsed.messages) + len(parsed.statuses) + len(parsed.ignored) >= 1


@needs_corpus
@pytest.mark.parametrize("path", CLOUD_MALFORMED, ids=_ids(CLOUD_MALFORMED))
def test_broken_cloud_body_is_a_400(path):
    with pytest.raises(WebhookRejected) as rejected:
        cloud.parse(path.read_bytes())
    assert rejected.value.status == 400


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"object":"page","entry":[]}',
                                  b'{"object":"whatsapp_business_account","entry":{}}'])
def test_a_body_outside_the_cloud_envelope_is_a_400(body):
    with pytest.raises(WebhookRejected) as rejected:
        cloud.parse(body)
    assert rejected.value.status == 400


# ---- Cloud API: what customers send -----------------------------------------

@needs_corpus
def test_customer_says_hi_and_baton_sees_who_where_and_when():
    [message] = cloud_sample("bindambc__textMessage.json").messages
    assert (message.type, message.text, message.wa_id) == ("text", "hi everyone!", "1111111111111")
    assert (message.phone_number_id, message.contact_name) == ("409552778964973", "Mauricio Binda")
    assert message.sent_at == utc(1672947578) and message.from_me is False


@needs_corpus
def test_customer_sends_a_photo_and_its_media_id_and_type_are_kept():
    [message] = cloud_sample("bindambc__imageMessage.json").messages
    assert message.type == "image"
    assert message.media["provider_media_id"] == "8472976218001204"
    assert message.media["mime_type"] == "image/jpeg"


@needs_corpus
def test_customer_captions_a_photo_and_the_caption_is_the_text():
    [message] = cloud_sample("netflie__can_build_an_image_notification.json").messages
    assert message.text == "CAPTION_TEXT"


@needs_corpus
def test_customer_sends_a_document_and_its_filename_is_kept():
    [message] = cloud_sample("bindambc__documentMessage.json").messages
    assert message.media["filename"] == "4_641947.pdf"


@needs_corpus
def test_media_url_in_the_webhook_is_kept_for_download():
    [message] = cloud_sample("pywa__message__media_with_url.json").messages
    assert message.media["url"].startswith("https://lookaside.fbsbx.com/")


@needs_corpus
def test_customer_reacts_with_a_thumbs_up():
    [message] = cloud_sample("bindambc__reactMessage.json").messages
    assert (message.type, message.text) == ("reaction", "👍")


@needs_corpus
@pytest.mark.parametrize("name", ["netflie__can_build_a_removed_reaction_notification.json",
                                  "pywa__message__unreaction_empty.json",
                                  "pywa__message__unreaction_no_emoji.json"])
def test_customer_takes_a_reaction_back_and_it_has_no_text(name):
    [message] = cloud_sample(name).messages
    assert (message.type, message.text) == ("reaction", None)


@pytest.mark.parametrize("name, text", [
    ("netflie__can_build_a_button_reply_notification.json", "button-text"),
    ("netflie__can_build_a_list_notification.json", "list_reply_title"),
    ("netflie__can_build_a_flow_notification.json", "Sent"),
])
@needs_corpus
def test_customer_answers_an_interactive_message_with_its_title(name, text):
    [message] = cloud_sample(name).messages
    assert (message.type, message.text) == ("interactive", text)


@needs_corpus
def test_customer_taps_a_template_quick_reply():
    [message] = cloud_sample("bindambc__buttonMessage.json").messages
    assert (message.type, message.text) == ("button", "SIM")


@needs_corpus
def test_customer_shares_a_place_described_by_name_and_address():
    [message] = cloud_sample("pywa__message__chosen_location.json").messages
    assert message.text == "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025"
    assert message.raw["location"]["latitude"] == 37.4611978


@needs_corpus
def test_customer_changes_number_and_the_notice_is_a_system_message():
    [message] = cloud_sample("pywa__system__phone_number_change.json").messages
    assert message.type == "system" and "changed from" in message.text and message.contact_name is None


@needs_corpus
def test_customer_known_only_by_bsuid_is_keyed_by_user_id():
    [message] = cloud_sample("netflie__can_build_a_notification_with_bsuid_only_and_no_from.json").messages
    assert (message.wa_id, message.user_id, message.contact_name) == (None, "BSUID_123", "NAME")


@needs_corpus
def test_integer_timestamps_are_unix_seconds_too():
    [message] = cloud_sample("netflie__can_build_a_button_notification.json").messages
    assert message.sent_at == utc(1669233778)


@needs_corpus
def test_two_changes_in_one_post_give_two_messages():
    messages = cloud_sample("netflie__can_build_multiple_text_notification.json").messages
    assert [m.text for m in messages] == ["MESSAGE_BODY", "MESSAGE_BODY2"]


@needs_corpus
@pytest.mark.parametrize("name", ["netflie__can_build_an_unknown_notification.json",
                                  "pywa__message__unsupported_with_type.json",
                                  "pywa__deleted_message__revoke.json"])
def test_a_message_type_baton_does_not_know_is_unsupported(name):
    [message] = cloud_sample(name).messages
    assert message.type == "unsupported"


@needs_corpus
def test_business_replies_from_the_phone_app_and_baton_sees_an_echo():
    [message] = cloud_sample("pywa__outgoing_message__text.json").messages
    assert message.from_me is True
    assert (message.wa_id, message.text) == ("<WHATSAPP_USER_PHONE_NUMBER>", "Test message")


@needs_corpus
def test_system_level_errors_are_ignored_beside_the_message():
    parsed = cloud_sample("pywa__message__interactive_message_with_err.json")
    assert len(parsed.messages) == 1 and [i.kind for i in parsed.ignored] == ["errors"]


def _text_batch(*messages: dict) -> bytes:
    value = {"metadata": {"phone_number_id": "PNID"}, "contacts": [], "messages": list(messages)}
    return orjson.dumps({"object": "whatsapp_business_account",
                         "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]})


def test_a_garbage_timestamp_does_not_reject_the_batch():
    before = datetime.now(timezone.utc)
    parsed = cloud.parse(_text_batch(
        {"from": "1", "id": "wamid.A", "timestamp": "<TIMESTAMP>", "type": "text", "text": {"body": "a"}},
        {"from": "2", "id": "wamid.B", "timestamp": "1700000000", "type": "text", "text": {"body": "b"}}))
    first, second = parsed.messages
    assert before - timedelta(seconds=1) <= first.sent_at <= datetime.now(timezone.utc)
    assert second.sent_at == utc(1700000000)


def test_a_message_without_id_is_ignored_not_fatal():
    parsed = cloud.parse(_text_batch({"from": "1", "timestamp": "1", "type": "text", "text": {"body": "x"}}))
    assert parsed.messages == [] and [i.kind for i in parsed.ignored] == ["message_without_id"]


# ---- Cloud API: statuses and other fields -----------------------------------

@needs_corpus
def test_send_fails_after_24h_and_the_status_keeps_metas_error():
    [status] = cloud_sample("bindambc__reEngagementMessageError.json").statuses
    assert (status.status, status.recipient_wa_id) == ("failed", "5511111111111")
    assert (status.error["code"], status.error["title"]) == (131047, "Re-engagement message")
    assert "24 hours" in status.error["details"]


@needs_corpus
def test_delivered_status_is_tied_to_the_wamid():
    [status] = cloud_sample("bindambc__textMessageStatusDelivered.json").statuses
    assert status.status == "delivered" and status.provider_message_id.startswith("wamid.")
    assert status.timestamp == utc(1673020317)


@needs_corpus
def test_a_played_voice_note_is_played():
    [status] = cloud_sample("pywa__message_status__played.json").statuses
    assert status.status == "played"


@needs_corpus
def test_call_events_are_ignored_not_taken_for_message_statuses():
    parsed = cloud_sample("pywa__call_status__call_status.json")
    assert parsed.statuses == [] and [i.kind for i in parsed.ignored] == ["field:calls"]


@pytest.mark.parametrize("name, kind", [
    ("bindambc__accountBanned.json", "field:account_update"),
    ("bindambc__rejectedTemplate.json", "field:message_template_status_update"),
    ("bindambc__qualityUpdate.json", "field:phone_number_quality_update"),
    ("pywa__user_marketing_preferences__signup.json", "field:user_preferences"),
])
@needs_corpus
def test_account_notices_are_ignored_by_field_name(name, kind):
    parsed = cloud_sample(name)
    assert (parsed.messages, parsed.statuses, [i.kind for i in parsed.ignored]) == ([], [], [kind])


# ---- Cloud API: signature and handshake -------------------------------------

VECTORS = signature_vectors()   # ours always, the corpus's when it is there


def _vector(path: Path) -> tuple[str, str, bytes]:
    vector = orjson.loads(path.read_bytes())
    return vector["app_secret"], vector["x_hub_signature_256"], (path.parent / vector["body_file"]).read_bytes()


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_a_known_answer_signature_is_accepted(path):
    secret, signature, body = _vector(path)
    CloudApiAdapter(app_secret=secret).verify({"X-Hub-Signature-256": signature}, body)


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_one_changed_byte_breaks_the_signature(path):
    secret, signature, body = _vector(path)
    middle = len(body) // 2
    tampered = body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1:]
    with pytest.raises(WebhookRejected) as rejected:
        CloudApiAdapter(app_secret=secret).verify({"X-Hub-Signature-256": signature}, tampered)
    assert (rejected.value.status, rejected.value.code) == (401, "invalid_signature")


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_a_signature_made_with_another_secret_is_refused(path):
    _, signature, body = _vector(path)
    with pytest.raises(WebhookRejected):
        CloudApiAdapter(app_secret="someone-else").verify({"X-Hub-Signature-256": signature}, body)


@pytest.mark.parametrize("path", VECTORS, ids=vector_id)
def test_the_signature_header_is_found_whatever_its_case(path):
    secret, signature, body = _vector(path)
    environ = {"HTTP_X_HUB_SIGNATURE_256": signature}
    CloudApiAdapter(app_secret=secret).verify(EnvironHeaders(environ), body)
    CloudApiAdapter(app_secret=secret).verify({"x-hub-signature-256": signature}, body)


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature-256": "sha1=abc"},
                                     {"X-Hub-Signature-256": "sha256=zz"}])
def test_a_missing_or_malformed_signature_is_a_401(headers):
    with pytest.raises(WebhookRejected) as rejected:
        cloud.verify(headers, b"{}")
    assert rejected.value.status == 401


@pytest.mark.parametrize("mode, token, accepted", [
    ("subscribe", "let-me-in", True), ("subscribe", "guess", False),
    ("unsubscribe", "let-me-in", False), ("subscribe", None, False)])
def test_meta_subscribes_the_callback_only_with_our_verify_token(mode, token, accepted):
    assert cloud.check_handshake(mode, token, "1158201444") is accepted


def test_no_verify_token_configured_means_no_subscription():
    assert CloudApiAdapter(app_secret="s").check_handshake("subscribe", "", "1") is False


# ---- WASender: every sample --------------------------------------------------

@needs_corpus
@pytest.mark.parametrize("path", WASENDER_EVENTS, ids=_ids(WASENDER_EVENTS))
def test_wasender_event_yields_something_routable_or_ignorable(path):
    parsed = wasender.parse(path.read_bytes())
    assert len(parsed.messages) + len(parsed.statuses) + len(parsed.ignored) >= 1


@needs_corpus
@pytest.mark.parametrize("path", WASENDER_API_EXAMPLES + WASENDER_MALFORMED,
                         ids=_ids(WASENDER_API_EXAMPLES + WASENDER_MALFORMED))
def test_rest_examples_and_commented_json_are_not_webhooks(path):
    with pytest.raises(WebhookRejected) as rejected:
        wasender.parse(path.read_bytes())
    assert rejected.value.status == 400


@needs_corpus
@pytest.mark.parametrize("name, wa_id", [("messages.received__pn.json", "1234567890"),
                                         ("messages.received__lid.json", "5551234567"),
                                         ("messages-personal.received.json", "1234567890")])
def test_wasender_customer_is_keyed_by_phone_number_even_in_lid_chats(name, wa_id):
    [message] = wasender_sample(name).messages
    assert (message.wa_id, message.type, message.from_me) == (wa_id, "text", False)


@needs_corpus
def test_wasender_messages_as_an_array_are_each_delivered():
    [message] = wasender_sample("messages.upsert__array.json").messages
    assert (message.provider_message_id, message.text) == ("message-id-123", "Hello!")


@needs_corpus
def test_wasender_legacy_body_without_event_is_still_a_message():
    [message] = wasender_sample("legacy__messages.upsert_help_article.json").messages
    assert (message.contact_name, message.sent_at) == ("John Doe", utc(1678886400))


@needs_corpus
@pytest.mark.parametrize("name", ["messages-group.received.json", "messages-newsletter.received.json"])
def test_wasender_group_and_channel_posts_are_ignored(name):
    parsed = wasender_sample(name)
    assert parsed.messages == [] and len(parsed.ignored) == 1


def test_business_types_on_the_phone_and_wasender_reports_an_echo():
    body = our_wasender_body("messages.received__text")
    body["data"]["messages"]["key"]["fromMe"] = True
    body["data"]["messages"]["pushName"] = "Our Shop"
    [message] = wasender.parse(orjson.dumps(body)).messages
    assert (message.from_me, message.wa_id, message.contact_name) == (True, "15550002201", None)


def test_wasender_photo_keeps_what_decrypting_it_needs():
    body = our_wasender_body("messages.received__text")
    body["data"]["messages"].update(messageBody="look", message={"imageMessage": {
        "url": "https://mmg.whatsapp.net/x.enc", "mimetype": "image/jpeg", "mediaKey": "a2V5",
        "caption": "look"}})
    [message] = wasender.parse(orjson.dumps(body)).messages
    assert (message.type, message.text) == ("image", "look")
    assert message.media["media_key"] == "a2V5" and message.media["mime_type"] == "image/jpeg"


def test_wasender_status_update_never_stores_the_session_key_and_reads_ms_timestamps():
    body = our_wasender_body("messages.update__read")
    [status] = wasender.parse(orjson.dumps(body)).statuses
    assert (status.status, status.provider_message_id) == ("read", "3EB0BATONFXOUT03")
    assert status.phone_number_id == "wasender" and body["sessionId"] not in repr(status)
    assert status.timestamp == utc(body["timestamp"] // 1000)


@pytest.mark.parametrize("ack, status", [(0, "failed"), (2, "sent"), (3, "delivered"),
                                         (4, "read"), (5, "played"), ("DELIVERY_ACK", "delivered")])
def test_wasender_ack_levels_map_to_baton_statuses(ack, status):
    body = our_wasender_body("messages.update__read")
    body["data"]["update"]["status"] = ack
    assert wasender.parse(orjson.dumps(body)).statuses[0].status == status


def test_wasender_pending_ack_is_not_a_status():
    body = our_wasender_body("messages.update__read")
    body["data"]["update"]["status"] = 1
    assert wasender.parse(orjson.dumps(body)).statuses == []


def test_wasender_read_receipt_in_a_private_chat_is_a_read_status():
    body = our_wasender_body("message-receipt.update__group")
    body["data"]["message"]["key"]["remoteJid"] = "15550002209@s.whatsapp.net"
    [status] = wasender.parse(orjson.dumps(body)).statuses
    assert (status.status, status.recipient_wa_id, status.timestamp) == (
        "read", "15550002209", utc(body["data"]["message"]["receipt"]["readTimestamp"]))


@needs_corpus
def test_wasender_group_receipts_are_ignored():
    parsed = wasender_sample("message-receipt.update__read.json")
    assert parsed.statuses == [] and len(parsed.ignored) == 1


@needs_corpus
def test_wasender_message_sent_confirms_a_send_and_a_failed_one_is_ignored():
    assert wasender_sample("message.sent__success.json").statuses[0].status == "sent"
    assert wasender_sample("message.sent__failed.json").statuses == []


def test_wasender_accepts_only_its_own_secret():
    wasender.verify({"x-webhook-signature": "wasender-secret"}, b"{}")
    for headers in ({}, {"X-Webhook-Signature": "wasender-secreT"}):
        with pytest.raises(WebhookRejected):
            wasender.verify(headers, b"{}")


def test_wasender_with_no_secret_configured_rejects_everything():
    with pytest.raises(WebhookRejected):
        WasenderAdapter(webhook_secret="").verify({"X-Webhook-Signature": ""}, b"{}")
