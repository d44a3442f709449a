"""Meta WhatsApp Business Cloud API adapter.

Webhooks: `X-Hub-Signature-256` HMAC over the raw body, the
`whatsapp_business_account` envelope, every entry/change/message/status.
Sending and media go through the Graph API with a Bearer token.
"""
from __future__ import annotations

import hmac
import re
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson
import requests
import urllib3

from ..signing import signature_matches
from ..storage import StorageError
from .base import (
    MEDIA_TYPES,
    NOT_SENT,
    IgnoredUpdate,
    tolerant,
    InboundMessage,
    MediaDownload,
    OutboundMessage,
    ParsedWebhook,
    SendError,
    SendResult,
    StatusUpdate,
    WebhookRejected,
    content_length,
    is_user_id,
    pooled_session,
    sending_pool,
    transport_error,
)

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
# How a media URL that has lived its few minutes answers: look the id up again.
_EXPIRED_URL = (401, 403, 404, 410)

# Meta codes that mean "not now" rather than "never": throughput and pair-rate
# limits, upgrade in progress, app/WABA rate limits, service unavailable and
# the generic unknown/temporary errors (1, 2, 131000).
RETRYABLE_CODES = frozenset({130429, 131056, 131057, 80007, 4, 131016, 131000, 1, 2})

_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed",
             "played": "played"}  # a voice message was played (ranks above read: models.message.STATUS_RANK)


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Return the header `name` from a dict or werkzeug headers, ignoring case."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def unix_time(value: Any, fallback: datetime) -> datetime:
    """Turn Unix seconds (int or digit string) into tz-aware UTC; `fallback` if unusable."""
    if isinstance(value, bool):
        return fallback
    try:
        seconds = int(value) if isinstance(value, (int, str)) else int(float(value))
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return fallback


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _error_summary(errors: Any) -> dict | None:
    first = _list(errors)[0] if _list(errors) else None
    if not isinstance(first, dict):
        return None
    code = first.get("code")
    try:
        code = int(code)
    except (TypeError, ValueError):
        pass
    details = _dict(first.get("error_data")).get("details") or first.get("message")
    return {"code": code, "title": first.get("title") or first.get("message") or "",
            "details": str(details) if details else None}


class CloudApiAdapter:
    """Speaks the Meta Cloud API: verifies and normalizes webhooks, sends, downloads media."""

    name = "cloud_api"

    def __init__(self, app_secret: str, access_token: str = "",
                 api_base: str = "https://graph.facebook.com/v23.0", verify_token: str = "",
                 timeout: float = 10.0, session: requests.Session | None = None, connections: int = 10):
        self.app_secret = app_secret
        self.access_token = access_token
        self.api_base = api_base.rstrip("/")
        self.verify_token = verify_token
        self.timeout = timeout
        self.session = session or pooled_session(connections)
        # Sends and typing indicators, the hot path, go through urllib3 directly: a
        # call costs about a third of what it costs through requests (bench/README.md).
        self.pool = sending_pool(connections)

    # ---- webhooks in -------------------------------------------------------

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> None:
        """Return only if `X-Hub-Signature-256` is the app-secret HMAC of `raw_body`."""
        match = _SIGNATURE.fullmatch((header_value(headers, "X-Hub-Signature-256") or "").strip())
        if not self.app_secret or not match:
            # An empty secret would make every signature forgeable, so it never passes.
            raise WebhookRejected(401, "invalid_signature", "missing or malformed X-Hub-Signature-256")
        if not signature_matches(self.app_secret, raw_body, f"sha256={match.group(1)}"):
            raise WebhookRejected(401, "invalid_signature", "X-Hub-Signature-256 does not match the body")

    def check_handshake(self, mode: str | None, token: str | None, challenge: str | None) -> bool:
        """True when the GET subscription handshake carries our verify token."""
        if mode != "subscribe" or not self.verify_token or token is None:
            return False
        return hmac.compare_digest(token.encode(), self.verify_token.encode())

    def parse(self, raw_body: bytes) -> ParsedWebhook:
        """Normalize every entry and change; 400 only when the envelope itself is wrong."""
        try:
            payload = orjson.loads(raw_body)
        except orjson.JSONDecodeError as exc:
            raise WebhookRejected(400, "malformed_payload", f"body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise WebhookRejected(400, "malformed_payload", "body is not a JSON object")
        if payload.get("object") != "whatsapp_business_account":
            raise WebhookRejected(400, "wrong_envelope", "object is not whatsapp_business_account")
        if not isinstance(payload.get("entry"), list):
            raise WebhookRejected(400, "wrong_envelope", "entry is not a list")

        parsed = ParsedWebhook()
        # One clock reading per body: messages with unusable timestamps in a batch share it.
        now = datetime.now(timezone.utc)
        for entry in payload["entry"]:
            if not isinstance(entry, dict):
                parsed.ignored.append(IgnoredUpdate("malformed_entry", None, {"entry": entry}))
                continue
            for change in _list(entry.get("changes")):
                self._parse_change(entry, change, now, parsed)
        return parsed

    def _parse_change(self, entry: dict, change: Any, now: datetime, parsed: ParsedWebhook) -> None:
        change = _dict(change)
        value = change.get("value")
        field_name = change.get("field")
        phone_number_id = _dict(_dict(value).get("metadata")).get("phone_number_id") or entry.get("id")
        phone_number_id = str(phone_number_id) if phone_number_id is not None else None
        if not isinstance(value, dict) or field_name not in ("messages", "smb_message_echoes"):
            parsed.ignored.append(IgnoredUpdate(f"field:{field_name}", phone_number_id, change))
            return
        contacts = [c for c in _list(value.get("contacts")) if isinstance(c, dict)]
        if field_name == "smb_message_echoes":
            for echo in _list(value.get("message_echoes")):
                self._add_message(echo, phone_number_id, contacts, True, now, parsed)
            return
        for message in _list(value.get("messages")):
            self._add_message(message, phone_number_id, contacts, False, now, parsed)
        for status in _list(value.get("statuses")):
            self._add_status(status, phone_number_id, now, parsed)
        for error in _list(value.get("errors")):
            parsed.ignored.append(IgnoredUpdate("errors", phone_number_id, _dict(error)))

    @tolerant("message")
    def _add_message(self, message: Any, phone_number_id: str | None, contacts: list[dict],
                     from_me: bool, now: datetime, parsed: ParsedWebhook) -> None:
        if not isinstance(message, dict) or not message.get("id"):
            parsed.ignored.append(IgnoredUpdate("message_without_id", phone_number_id, _dict(message)))
            return
        # The customer: a phone number, a business-scoped user id (2026), or both.
        phone, user_id = (message.get("to"), message.get("to_user_id")) if from_me else \
            (message.get("from"), message.get("from_user_id"))
        contact = _matching_contact(contacts, phone or user_id)
        if contact:
            phone, user_id = phone or contact.get("wa_id"), user_id or contact.get("user_id")
        if not phone and not user_id:
            parsed.ignored.append(IgnoredUpdate("message_without_sender", phone_number_id, message))
            return
        kind, text, media = _content(message)
        user_id, new_wa_id, new_user_id = _identity_change(message, user_id) if kind == "system" else \
            (user_id, None, None)
        profile = _dict(contact.get("profile")) if contact else {}
        parsed.messages.append(InboundMessage(
            provider_message_id=str(message["id"]),
            phone_number_id=phone_number_id or "",
            wa_id=_text(phone),
            type=kind,
            sent_at=unix_time(message.get("timestamp"), now),
            text=text,
            contact_name=profile.get("name"),
            media=media,
            from_me=from_me,
            raw=message,
            user_id=_text(user_id),
            username=_text(profile.get("username")),
            new_wa_id=_text(new_wa_id),
            new_user_id=_text(new_user_id),
        ))

    @tolerant("status")
    def _add_status(self, status: Any, phone_number_id: str | None, now: datetime,
                    parsed: ParsedWebhook) -> None:
        status = _dict(status)
        normalized = _STATUSES.get(str(status.get("status", "")).lower())
        if not isinstance(status.get("id"), str) or not status["id"] or normalized is None:
            # e.g. "deleted"/"warning", or a status we cannot tie to a message (no id, or not a string)
            parsed.ignored.append(IgnoredUpdate(f"status:{status.get('status')}", phone_number_id, status))
            return
        recipient = status.get("recipient_id") or status.get("recipient_user_id")
        parsed.statuses.append(StatusUpdate(
            provider_message_id=status["id"],
            phone_number_id=phone_number_id or "",
            recipient_wa_id=str(recipient) if recipient else None,
            status=normalized,
            timestamp=unix_time(status.get("timestamp"), now),
            error=_error_summary(status.get("errors")),
            reference=_reference(status.get("biz_opaque_callback_data")),
        ))

    # ---- sending and media -------------------------------------------------

    media_files = None      # MediaFiles: stored uploads to send (set by the runtime)

    def send(self, message: OutboundMessage) -> SendResult:
        """POST one message to `/{phone_number_id}/messages`; the wamid means accepted, not delivered.
        A stored file without a provider media id still fit to reuse is uploaded first
        (`POST /{phone_number_id}/media`) and sent by the id that gives."""
        uploaded = None
        if message.media and message.media.get("storage_key") and not message.media.get("id"):
            uploaded = self.upload_media(message.phone_number_id, message.media)
            message = replace(message, media={**message.media, "id": uploaded})
        answer = self._post_message(message.phone_number_id, self._send_body(message))
        try:
            wamid = orjson.loads(answer)["messages"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            # Meta accepted the request, so retrying could send the message twice.
            raise SendError("invalid_response", "2xx without messages[0].id", retryable=False) from None
        return SendResult(provider_message_id=str(wamid), uploaded_media_id=uploaded)

    def upload_media(self, phone_number_id: str, media: dict) -> str:
        """Upload a stored file (multipart: messaging_product, type, file); returns Meta's media id.
        Whatever goes wrong here, the message itself was not sent (stage NOT_SENT)."""
        if self.media_files is None:
            raise SendError("no_media_store", "this adapter has no media store to read the file from",
                            retryable=False, stage=NOT_SENT)
        mime = media.get("mime_type") or "application/octet-stream"
        try:
            with self.media_files.open(media["storage_key"]) as file:
                response = self.session.post(
                    f"{self.api_base}/{phone_number_id}/media", timeout=max(self.timeout, 60.0),
                    headers={"Authorization": f"Bearer {self.access_token}"},
                    data={"messaging_product": "whatsapp", "type": mime},
                    files={"file": (media.get("filename") or f"file.{mime.split('/')[-1]}", file, mime)})
        except requests.RequestException as exc:
            error = transport_error(exc)
            raise SendError(error.code, f"uploading the file: {error.title}", retryable=True, stage=NOT_SENT) from None
        except (StorageError, OSError) as exc:
            raise SendError("storage", f"reading the stored file: {exc}"[:400], retryable=True,
                            stage=NOT_SENT) from None
        if response.status_code >= 400:
            error = graph_error(response)
            raise SendError(error.code, f"uploading the file: {error.title}", error.retryable, error.retry_after,
                            stage=NOT_SENT)
        try:
            media_id = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            raise SendError("invalid_response", "media upload without id", retryable=True, stage=NOT_SENT) from None
        return str(media_id)

    def show_typing(self, phone_number_id: str, to: str, provider_message_id: str) -> None:
        """Mark the customer's message read and show the typing indicator."""
        self._post_message(phone_number_id, {
            "messaging_product": "whatsapp", "status": "read", "message_id": provider_message_id,
            "typing_indicator": {"type": "text"}})

    def open_media(self, media: dict) -> MediaDownload:
        """Resolve a webhook media id to a short-lived URL (`GET /{media-id}`), then
        download it with the same token. A URL an earlier lookup gave
        (`resolved_url`) is tried first; once it has expired (401/403/404/410)
        the id is looked up again. The payload's own `url` is never fetched."""
        media_id = media.get("provider_media_id")
        if not media_id:
            raise SendError("no_media_id", "media has no provider_media_id", retryable=False)
        if media.get("resolved_url"):
            try:
                return self._download(media["resolved_url"], {}, media)
            except SendError as error:
                if error.code not in _EXPIRED_URL:
                    raise
        meta = self._request("GET", f"{self.api_base}/{media_id}")
        try:
            info = _dict(meta.json())
            url = info["url"]
        except (ValueError, KeyError, TypeError):
            raise SendError("invalid_response", "media lookup without url", retryable=False) from None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise SendError("invalid_response", "media lookup without url", retryable=False)
        return self._download(url, info, media)

    def _download(self, url: str, info: dict, media: dict) -> MediaDownload:
        """GET the file with the token, streamed. A 404 means "look the id up again": retryable."""
        try:
            response = self.session.get(url, stream=True, timeout=self.timeout,
                                        headers={"Authorization": f"Bearer {self.access_token}"})
        except requests.RequestException as exc:
            raise transport_error(exc) from None
        if response.status_code >= 400:
            try:
                raise SendError(response.status_code, response.reason or f"HTTP {response.status_code}",
                                retryable=response.status_code in (*_EXPIRED_URL, 429)
                                or response.status_code >= 500)
            finally:
                response.close()
        size = info.get("file_size")
        return MediaDownload(
            response=response,
            mime_type=(info.get("mime_type") or media.get("mime_type")
                       or response.headers.get("Content-Type", "application/octet-stream")),
            declared_size=int(size) if isinstance(size, (int, str)) and str(size).isdigit()
            else content_length(response),
            declared_sha256=info.get("sha256") if isinstance(info.get("sha256"), str) else None,
            resolved_url=url)

    def fetch_templates(self, waba_id: str, most_pages: int = 50) -> list[dict]:
        """The WhatsApp Business Account's message templates, every page (`GET /{waba_id}/message_templates`,
        following `paging.next`): Graph's entries as they come, whatever their status."""
        url: str | None = f"{self.api_base}/{waba_id}/message_templates"
        params: dict | None = {"fields": "name,language,status,category,parameter_format,components", "limit": 100}
        entries: list[dict] = []
        for _ in range(most_pages):
            try:
                response = self.session.get(url, params=params, timeout=self.timeout,
                                            headers={"Authorization": f"Bearer {self.access_token}"})
            except requests.RequestException as exc:
                raise SendError("network", f"{type(exc).__name__}: {exc}", retryable=True) from None
            try:
                page = response.json()
            except ValueError:
                page = None
            if response.status_code >= 400 or not isinstance(page, dict):
                error = _dict(_dict(page).get("error"))
                raise SendError(error.get("code", response.status_code),
                                error.get("message") or f"HTTP {response.status_code} listing message templates",
                                retryable=response.status_code == 429 or response.status_code >= 500)
            entries.extend(e for e in _list(page.get("data")) if isinstance(e, dict))
            url, params = _dict(page.get("paging")).get("next"), None     # `next` carries its own query
            if not url:
                return entries
        raise SendError("too_many_pages", f"more than {most_pages} pages of message templates",
                        retryable=False)

    def _send_body(self, message: OutboundMessage) -> dict:
        # A business-scoped user id goes in `recipient`, a phone number in `to`.
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                "recipient" if is_user_id(message.to) else "to": message.to}
        if message.template:
            # Graph's shape: {"name", "language": {"code"}, "components"?}; no components key when there are none.
            language = message.template.get("language")
            template = {"name": message.template.get("name"),
                        "language": {"code": language} if isinstance(language, str) else language}
            if message.template.get("components"):
                template["components"] = message.template["components"]
            body.update(type="template", template=template)
        elif message.media:
            kind = message.media.get("type")
            if kind not in MEDIA_TYPES:
                raise SendError("invalid_message", f"unsupported media type {kind!r}", retryable=False)
            media = {k: message.media[k] for k in ("link", "id", "caption") if message.media.get(k)}
            if kind == "document" and message.media.get("filename"):
                media["filename"] = message.media["filename"]
            body.update(type=kind, **{kind: media})
        elif message.text is not None:
            body.update(type="text", text={"preview_url": False, "body": message.text})
        else:
            raise SendError("invalid_message", "nothing to send: no text, template or media", retryable=False)
        if message.reply_to:
            body["context"] = {"message_id": message.reply_to}
        if message.reference:
            # Meta echoes it in this message's status webhooks: how a send whose
            # answer was lost is recognised as accepted (jobs/send.py).
            body["biz_opaque_callback_data"] = message.reference
        return body

    def _post_message(self, phone_number_id: str, body: dict) -> bytes:
        """POST `body` to `/{phone_number_id}/messages`; the answer's bytes (raises SendError)."""
        try:
            response = self.pool.request(
                "POST", f"{self.api_base}/{phone_number_id}/messages", body=orjson.dumps(body),
                headers={"Authorization": f"Bearer {self.access_token}", "Content-Type": "application/json"},
                timeout=self.timeout, retries=False)
        except urllib3.exceptions.HTTPError as exc:
            raise transport_error(exc) from None
        if response.status >= 400:
            raise answer_error(response.status, response.reason, response.headers.get("Retry-After"), response.data)
        return response.data

    def _request(self, method: str, url: str, json: dict | None = None,
                 not_found_retryable: bool = False) -> requests.Response:
        try:
            response = self.session.request(
                method, url, json=json, timeout=self.timeout,
                headers={"Authorization": f"Bearer {self.access_token}"})
        except requests.RequestException as exc:
            raise transport_error(exc) from None
        if response.status_code >= 400:
            raise graph_error(response, not_found_retryable)
        return response


def graph_error(response: requests.Response, not_found_retryable: bool = False) -> SendError:
    """Map a Graph API error response to a SendError, deciding whether a retry may work."""
    return answer_error(response.status_code, response.reason, response.headers.get("Retry-After"),
                        response.content, not_found_retryable)


def answer_error(status: int, reason: str | None, retry_after: str | None, body: bytes,
                 not_found_retryable: bool = False) -> SendError:
    """graph_error() from an answer's parts (status, reason phrase, Retry-After, body)."""
    try:
        error = _dict(_dict(orjson.loads(body)).get("error"))
    except ValueError:
        error = {}
    code = error.get("code", status)
    retryable = (status == 429 or status >= 500
                 or (isinstance(code, int) and code in RETRYABLE_CODES)
                 or (not_found_retryable and status == 404))
    title = error.get("message") or reason or f"HTTP {status}"
    return SendError(code, title, retryable=retryable, retry_after=_retry_after(retry_after))


def _reference(value: Any) -> str | None:
    """Baton's message id from `biz_opaque_callback_data` (only a string of a sane length counts)."""
    return value if isinstance(value, str) and 0 < len(value) <= 512 else None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP-date; callers fall back to their own backoff


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _identity_change(message: dict, user_id: Any) -> tuple[Any, Any, Any]:
    """(the user id the customer had, their new phone number, their new user id)
    for the system messages that re-identify a customer: `user_changed_user_id`
    (a new BSUID, no phone number) and `user_changed_number` (a new phone number,
    which regenerates the BSUID too). The previous user id is `previous_user_id`
    when Meta gives it, else the one the message came from."""
    system = _dict(message.get("system"))
    kind = system.get("type")
    if kind not in ("user_changed_user_id", "user_changed_number"):
        return user_id, None, None
    previous = system.get("previous_user_id") or user_id
    new_phone = system.get("wa_id") if kind == "user_changed_number" else None
    new_user_id = system.get("user_id")
    return previous, new_phone, new_user_id if new_user_id != previous else None


def _matching_contact(contacts: list[dict], customer: Any) -> dict | None:
    for contact in contacts:
        if customer and customer in (contact.get("wa_id"), contact.get("user_id")):
            return contact
    # Meta sends one contact per change in practice; with one, it is the sender.
    return contacts[0] if len(contacts) == 1 else None


def _content(message: dict) -> tuple[str, str | None, dict | None]:
    """Return (type, text, media) for one message; unknown types become "unsupported"."""
    kind = message.get("type")
    body = _dict(message.get(kind)) if isinstance(kind, str) else {}
    if kind == "text":
        return "text", body.get("body"), None
    if kind in MEDIA_TYPES:
        media = {name: body[key] for name, key in (("provider_media_id", "id"), ("mime_type", "mime_type"),
                 ("sha256", "sha256"), ("filename", "filename"), ("url", "url"), ("animated", "animated"))
                 if body.get(key)}
        return kind, body.get("caption"), media or None
    if kind == "location":
        return kind, ", ".join(str(body[k]) for k in ("name", "address") if body.get(k)) or None, None
    if kind == "contacts":
        names = [_dict(c.get("name")).get("formatted_name") for c in _list(message.get("contacts"))
                 if isinstance(c, dict)]
        return kind, ", ".join(n for n in names if n) or None, None
    if kind == "interactive":
        reply_type = body.get("type")
        reply = _dict(body.get(reply_type)) if isinstance(reply_type, str) else {}
        if reply_type in ("button_reply", "list_reply"):
            return kind, reply.get("title"), None
        if reply_type == "nfm_reply":
            return kind, reply.get("body") or None, None
        return kind, None, None
    if kind == "button":
        return kind, body.get("text"), None
    if kind == "reaction":
        return kind, body.get("emoji") or None, None  # empty or absent emoji = reaction removed
    if kind in ("order", "system"):
        return kind, body.get("text" if kind == "order" else "body") or None, None
    return "unsupported", None, None
