"""Sending and media download through both adapters, against fakes over real HTTP."""
from __future__ import annotations

import pytest

from integrations.whatsapp.base import OutboundMessage, SendError
from integrations.whatsapp.cloud_api import CloudApiAdapter
from integrations.whatsapp.wasender import WasenderAdapter
from tests.support import free_port


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def graph_adapter(fake, **overrides) -> CloudApiAdapter:
    options = dict(app_secret="s", access_token=fake.access_token, api_base=fake.api_base, timeout=5)
    return CloudApiAdapter(**{**options, **overrides})


def text_to(wa_id: str = "15551234567", **extra) -> OutboundMessage:
    return OutboundMessage(to=wa_id, phone_number_id="PNID", text="Hello from Baton", **extra)


def test_agent_reply_is_accepted_by_meta_with_a_wamid(graph_api):
    result = graph_adapter(graph_api).send(text_to())
    [(method, path, headers, body)] = graph_api.requests
    assert result.provider_message_id.startswith("wamid.")
    assert (method, path, headers["Authorization"]) == ("POST", "/v23.0/PNID/messages",
                                                        f"Bearer {graph_api.access_token}")
    assert body == {"messaging_product": "whatsapp", "recipient_type": "individual",
                    "to": "15551234567", "type": "text",
                    "text": {"preview_url": False, "body": "Hello from Baton"}}


def test_a_reply_quotes_the_customers_message(graph_api):
    graph_adapter(graph_api).send(text_to(reply_to="wamid.CUSTOMER"))
    assert graph_api.requests[0][3]["context"] == {"message_id": "wamid.CUSTOMER"}


def test_outside_the_window_a_template_is_sent(graph_api):
    template = {"name": "follow_up", "language": "en_US"}
    graph_adapter(graph_api).send(OutboundMessage(to="1", phone_number_id="PNID", template=template))
    body = graph_api.requests[0][3]
    assert body["type"] == "template"
    assert body["template"] == {"name": "follow_up", "language": {"code": "en_US"}}


def test_meta_throttles_and_the_send_may_be_retried_later(graph_api):
    graph_api.fail_next(1, 429, {"error": {"code": 130429, "message": "(#130429) Rate limit hit"}},
                        headers={"Retry-After": "7"})
    with pytest.raises(SendError) as error:
        graph_adapter(graph_api).send(text_to())
    assert (error.value.code, error.value.retryable, error.value.retry_after) == (130429, True, 7.0)


def test_a_meta_outage_may_be_retried(graph_api):
    graph_api.fail_next(1, 500, {"error": {"code": 2, "message": "Service temporarily unavailable"}})
    with pytest.raises(SendError) as error:
        graph_adapter(graph_api).send(text_to())
    assert error.value.retryable is True


def test_a_reply_after_24_hours_is_refused_for_good(graph_api):
    graph_api.fail_next(1, 400, {"error": {"code": 131047, "message": "Re-engagement message"}})
    with pytest.raises(SendError) as error:
        graph_adapter(graph_api).send(text_to())
    assert (error.value.code, error.value.title, error.value.retryable) == (
        131047, "Re-engagement message", False)


def test_a_bad_access_token_is_refused_for_good(graph_api):
    with pytest.raises(SendError) as error:
        graph_adapter(graph_api, access_token="stale").send(text_to())
    assert (error.value.code, error.value.retryable) == (190, False)


def test_meta_unreachable_means_try_again_later():
    adapter = CloudApiAdapter(app_secret="s", access_token="t", api_base=closed_port_url(), timeout=2)
    with pytest.raises(SendError) as error:
        adapter.send(text_to())
    assert (error.value.code, error.value.retryable) == ("network", True)


def read_all(download) -> tuple[bytes, str]:
    try:
        return b"".join(download.chunks()), download.mime_type
    finally:
        download.close()


def test_customer_photo_is_downloaded_with_the_token(graph_api):
    graph_api.add_media("8472976218001204", b"\xff\xd8jpeg", "image/jpeg")
    download = graph_adapter(graph_api).open_media({"provider_media_id": "8472976218001204",
                                                    "url": "https://evil.example/not-fetched"})
    assert download.declared_size == 6 and download.declared_sha256
    assert read_all(download) == (b"\xff\xd8jpeg", "image/jpeg")
    assert [r[1] for r in graph_api.requests] == ["/v23.0/8472976218001204",
                                                   "/lookaside/8472976218001204/content"]


def test_an_expired_media_id_is_not_retried(graph_api):
    with pytest.raises(SendError) as error:
        graph_adapter(graph_api).open_media({"provider_media_id": "gone"})
    assert error.value.retryable is False


def wasender_adapter(fake, **overrides) -> WasenderAdapter:
    options = dict(webhook_secret="s", api_key=fake.api_key, api_base=fake.url, timeout=5)
    return WasenderAdapter(**{**options, **overrides})


def test_agent_reply_goes_out_through_wasender(wasender_api):
    result = wasender_adapter(wasender_api).send(text_to())
    [(method, path, headers, body)] = wasender_api.requests
    assert result.provider_message_id == "100000"
    assert (method, path, headers["Authorization"]) == ("POST", "/api/send-message",
                                                        f"Bearer {wasender_api.api_key}")
    assert body == {"to": "+15551234567", "text": "Hello from Baton"}


def test_wasender_trial_limit_says_when_to_retry(wasender_api):
    # the body WASender documents for its trial limit (wasender/api__error__rate_limit_trial.json)
    wasender_api.fail_next(1, 429, {"message": "You are on a free trial. You can only send 1 message "
                                               "every 1 minute.", "retry_after": 60})
    with pytest.raises(SendError) as error:
        wasender_adapter(wasender_api).send(text_to())
    assert (error.value.retryable, error.value.retry_after) == (True, 60.0)


def test_a_wasender_outage_may_be_retried(wasender_api):
    wasender_api.fail_next(1, 503, {"message": "Service Unavailable"})
    with pytest.raises(SendError) as error:
        wasender_adapter(wasender_api).send(text_to())
    assert error.value.retryable is True


def test_wasender_validation_failure_is_refused_for_good(wasender_api):
    with pytest.raises(SendError) as error:
        wasender_adapter(wasender_api).send(OutboundMessage(to="1", phone_number_id="x", text=""))
    assert (error.value.code, error.value.retryable) == (422, False)


def test_wasender_success_false_is_refused_for_good(wasender_api):
    wasender_api.fail_next(1, 200, {"success": False, "message": "Session not connected"})
    with pytest.raises(SendError) as error:
        wasender_adapter(wasender_api).send(text_to())
    assert (error.value.title, error.value.retryable) == ("Session not connected", False)


def test_wasender_unreachable_means_try_again_later():
    adapter = WasenderAdapter(webhook_secret="s", api_key="k", api_base=closed_port_url(), timeout=2)
    with pytest.raises(SendError) as error:
        adapter.send(text_to())
    assert error.value.retryable is True


def test_wasender_photo_is_decrypted_before_download(wasender_api):
    url = wasender_api.add_media("3EB0PHOTO", b"\x89PNG", "image/png")
    media = {"provider_media_id": "3EB0PHOTO", "url": url, "mime_type": "image/png",
             "media_key": "a2V5", "message_type": "imageMessage"}
    assert read_all(wasender_adapter(wasender_api).open_media(media)) == (b"\x89PNG", "image/png")
    assert [r[1] for r in wasender_api.requests] == ["/api/decrypt-media",
                                                      "/api/decrypted-media/3EB0PHOTO"]
    # The API key goes to the decrypt call only, never with the download of the public URL.
    assert [r[2].get("Authorization") for r in wasender_api.requests] == [f"Bearer {wasender_api.api_key}", None]


def test_wasender_media_without_url_cannot_be_fetched():
    with pytest.raises(SendError) as error:
        WasenderAdapter(webhook_secret="s").open_media({"mime_type": "image/png"})
    assert error.value.retryable is False
