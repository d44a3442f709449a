"""WasenderAPI adapter (unofficial, WhatsApp-Web based).

Webhooks carry the shared secret itself in `X-Webhook-Signature` (the body is
not signed). Envelope: `{"event", "timestamp", "sessionId"?, "data"}`.
"""
from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson
import requests

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
    pooled_session,
    transport_error,
)
from .cloud_api import header_value

MESSAGE_EVENTS = frozenset({"messages.received", "messages.upsert", "messages-personal.received"})
STATUS_EVENTS = frozenset({"messages.update", "message-receipt.update", "message.sent"})

# WhatsApp's message ack levels as WASender reports them in messages.update:
# 0 ERROR -> failed, 1 PENDING -> no status (not yet left the session; Baton's
# own "queued" covers it), 2 SERVER_ACK -> sent, 3 DELIVERY_ACK -> delivered,
# 4 READ -> read, 5 PLAYED -> played (ranks above read).
ACK_STATUS = {0: "failed", 2: "sent", 3: "delivered", 4: "read", 5: "played"}
_NAMED_ACKS = {"ERROR": 0, "PENDING": 1, "SERVER_ACK": 2, "SENT": 2, "DELIVERY_ACK": 3,
               "DELIVERED": 3, "READ": 4, "PLAYED": 5, "FAILED": 0}

# Baileys message keys -> Baton types. Wrappers (ephemeral, view-once) are unwrapped first.
_MESSAGE_KINDS = {
    "conversation": "text", "extendedTextMessage": "text",
    "imageMessage": "image", "videoMessage": "video", "ptvMessage": "video",
    "audioMessage": "audio", "documentMessage": "document", "stickerMessage": "sticker",
    "locationMessage": "location", "liveLocationMessage": "location",
    "contactMessage": "contacts", "contactsArrayMessage": "contacts",
    "reactionMessage": "reaction", "orderMessage": "order",
    "buttonsResponseMessage": "interactive", "listResponseMessage": "interactive",
    "interactiveResponseMessage": "interactive", "templateButtonReplyMessage": "button",
}
_WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2",
             "viewOnceMessageV2Extension", "documentWithCaptionMessage", "editedMessage")


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list:
    """WASender sends some payloads as one object and others as a list of them."""
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


def wasender_time(value: Any, fallback: datetime) -> datetime:
    """Unix seconds or milliseconds (int, digit string or protobuf Long) -> tz-aware UTC."""
    if isinstance(value, bool):
        return fallback
    try:
        if isinstance(value, dict):  # protobuf Long as Baileys serialises it
            number = (int(value.get("high") or 0) << 32) + (int(value["low"]) & 0xFFFFFFFF)
        else:
            number = int(value)
    except (TypeError, ValueError, KeyError):
        return fallback
    if number > 10**11:  # seconds would be past the year 5000: it is milliseconds
        number //= 1000
    try:
        return datetime.fromtimestamp(number, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return fallback


def jid_user(jid: Any) -> str | None:
    """'15551234567:3@s.whatsapp.net' / '+1555...' / '123@lid' -> the bare user part."""
    if not isinstance(jid, str) or not jid:
        return None
    return jid.split("@", 1)[0].split(":", 1)[0].lstrip("+") or None


def _chat_kind(remote_jid: Any) -> str | None:
    """Name the non-1:1 chats Baton does not route, or None for a private chat."""
    jid = remote_jid if isinstance(remote_jid, str) else ""
    for suffix, kind in (("@g.us", "group"), ("@newsletter", "newsletter"), ("@broadcast", "broadcast")):
        if jid.endswith(suffix):
            return kind
    return None


def _customer(key: dict) -> str | None:
    """The customer's phone number for a private-chat message key (our own echoes included)."""
    remote = key.get("remoteJid")
    if key.get("fromMe") and isinstance(remote, str) and (
            "@" not in remote or remote.endswith("@s.whatsapp.net")):
        # In an echo the chat id is the customer; sender fields may describe us.
        return jid_user(remote)
    for name in ("cleanedSenderPn", "cleanedParticipantPn"):
        if key.get(name):
            return str(key[name]).lstrip("+")
    for name in ("senderPn", "participantPn", "remoteJidAlt"):
        if str(key.get(name, "")).endswith("@s.whatsapp.net"):
            return jid_user(key[name])
    return jid_user(remote)  # may be a LID when nothing better is known


def _lid(key: dict) -> str | None:
    """The customer's WhatsApp Web LID as `<digits>@lid`, when the key names one
    (in an echo only the chat id is the customer's)."""
    names = ("remoteJid", "remoteJidAlt") if key.get("fromMe") else \
        ("senderLid", "participantLid", "remoteJid", "remoteJidAlt")
    for name in names:
        value = key.get(name)
        if isinstance(value, str) and value.endswith("@lid") and jid_user(value):
            return f"{jid_user(value)}@lid"
    return None


class WasenderAdapter:
    """Speaks WasenderAPI: checks the shared secret, normalizes events, sends text and media."""

    name = "wasender"

    def __init__(self, webhook_secret: str, api_key: str = "",
                 api_base: str = "https://www.wasenderapi.com", timeout: float = 10.0,
                 session: requests.Session | None = None, connections: int = 10):
        self.webhook_secret = webhook_secret
        self.api_key = api_key
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.session = session or pooled_session(connections)

    # ---- webhooks in -------------------------------------------------------

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> None:
        """Return only if `X-Webhook-Signature` equals the configured secret (constant time)."""
        given = header_value(headers, "X-Webhook-Signature")
        if not self.webhook_secret or given is None or not hmac.compare_digest(
                given.encode(), self.webhook_secret.encode()):
            raise WebhookRejected(401, "invalid_signature", "X-Webhook-Signature does not match")

    def parse(self, raw_body: bytes) -> ParsedWebhook:
        """Normalize one event. 400 for non-JSON (JSONC too) or a body that is not an event.

        A body with `data.messages` but no `event` is the legacy messages.upsert shape
        from WASender's older docs and is parsed as such.
        """
        try:
            payload = orjson.loads(raw_body)
        except orjson.JSONDecodeError as exc:
            raise WebhookRejected(400, "malformed_payload", f"body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise WebhookRejected(400, "malformed_payload", "body is not a JSON object")
        data = payload.get("data")
        if not isinstance(data, (dict, list)):
            raise WebhookRejected(400, "wrong_envelope", "no data object")
        event = payload.get("event")
        if event is None and isinstance(data, dict) and "messages" in data:
            event = "messages.upsert"
        if not isinstance(event, str) or not event:
            raise WebhookRejected(400, "wrong_envelope", "no event name")

        # One WASender API key serves one session (one phone), and `sessionId`
        # may carry the session's API key itself: never store it as an id.
        channel = "wasender"
        envelope_time = wasender_time(payload.get("timestamp"), datetime.now(timezone.utc))
        parsed = ParsedWebhook()
        if event in MESSAGE_EVENTS and isinstance(data, dict) and "messages" in data:
            for item in _items(data["messages"]):
                self._add_message(_dict(item), channel, envelope_time, parsed)
        elif event == "messages.update":
            for item in _items(data):
                item = _dict(item)
                ack = _dict(item.get("update")).get("status")
                self._add_status(event, _dict(item.get("key")), _ack_status(ack), envelope_time,
                                 channel, item, parsed)
        elif event == "message-receipt.update":
            for item in _items(data.get("message") if isinstance(data, dict) else data):
                item = _dict(item)
                status, at = _receipt_status(_dict(item.get("receipt")))
                self._add_status(event, _dict(item.get("key")), status,
                                 wasender_time(at, envelope_time), channel, item, parsed)
        elif event == "message.sent" and isinstance(data, dict) and data.get("success") is not False:
            self._add_status(event, _dict(data.get("key")), "sent", envelope_time, channel, data, parsed)
        else:
            parsed.ignored.append(IgnoredUpdate(f"event:{event}", channel, payload))
        return parsed

    @tolerant("message")
    def _add_message(self, item: dict, channel: str, envelope_time: datetime,
                     parsed: ParsedWebhook) -> None:
        key = _dict(item.get("key"))
        chat_kind = _chat_kind(key.get("remoteJid"))
        customer = _customer(key)
        if chat_kind or not key.get("id") or not customer:
            kind = f"{chat_kind}_message" if chat_kind else "message_without_id_or_sender"
            parsed.ignored.append(IgnoredUpdate(kind, channel, item))
            return
        from_me = key.get("fromMe") is True
        content = _unwrap(_dict(item.get("message")))
        # messageBody alone (no raw message) still is a text the customer wrote.
        if content:
            kind, text, media = _content(content)
        else:
            kind, text, media = ("text" if item.get("messageBody") else "unsupported"), None, None
        if media is not None:
            media["provider_media_id"] = str(key["id"])  # decrypt-media is keyed by message id
        # A LID and a phone number in one key link the two (Contact.user_id holds the
        # LID); with a LID alone, the LID names the customer.
        lid = _lid(key)
        phone = customer
        if lid and from_me:       # our echo in a LID chat: only the chat's own ids are the customer's
            alt = key.get("remoteJidAlt")
            phone = jid_user(alt) if isinstance(alt, str) and alt.endswith("@s.whatsapp.net") else None
        elif lid and customer == jid_user(lid):
            phone = None
        parsed.messages.append(InboundMessage(
            provider_message_id=str(key["id"]),
            phone_number_id=channel,
            wa_id=phone,
            user_id=lid,
            type=kind,
            sent_at=wasender_time(item.get("messageTimestamp"), envelope_time),
            text=item.get("messageBody") or text,
            # On our own echoes pushName is the business's name, not the customer's.
            contact_name=None if from_me else (item.get("pushName") or None),
            media=media,
            from_me=from_me,
            raw=item,
        ))

    @tolerant("status")
    def _add_status(self, event: str, key: dict, status: str | None, at: datetime,
                    channel: str, raw: dict, parsed: ParsedWebhook) -> None:
        chat_kind = _chat_kind(key.get("remoteJid"))
        if chat_kind or not key.get("id") or status is None:
            kind = f"{chat_kind}_status" if chat_kind else f"event:{event}"
            parsed.ignored.append(IgnoredUpdate(kind, channel, raw))
            return
        remote = key.get("remoteJid")
        parsed.statuses.append(StatusUpdate(
            provider_message_id=str(key["id"]),
            phone_number_id=channel,
            # a chat addressed by LID names the customer as Contact.user_id does
            recipient_wa_id=_lid(key) if str(remote).endswith("@lid") else jid_user(remote),
            status=status,
            timestamp=at,
        ))

    # ---- sending and media -------------------------------------------------

    def send(self, message: OutboundMessage) -> SendResult:
        """POST /api/send-message; returns WASender's msgId (its own id, not a WhatsApp key id)."""
        body: dict[str, Any] = {"to": _recipient(message.to)}
        if message.template:
            raise SendError("unsupported", "WASender has no message templates", retryable=False)
        if message.media:
            kind = message.media.get("type")
            link = message.media.get("link") or self._stored_link(message.media)
            if kind not in MEDIA_TYPES or not link:
                raise SendError("invalid_message", "WASender sends media by public link only",
                                retryable=False)
            body[f"{kind}Url"] = link
            if message.media.get("caption"):
                body["text"] = message.media["caption"]
            if kind == "document" and message.media.get("filename"):
                body["fileName"] = message.media["filename"]
        elif message.text is not None:
            body["text"] = message.text
        else:
            raise SendError("invalid_message", "nothing to send", retryable=False)
        response = self._request("POST", f"{self.api_base}/api/send-message", json=body)
        payload = _json(response)
        msg_id = _dict(payload.get("data")).get("msgId")
        if payload.get("success") is False or msg_id is None:
            raise SendError("send_failed", str(payload.get("message") or "no msgId in response"),
                            retryable=False)
        return SendResult(provider_message_id=str(msg_id))

    media_files = None      # MediaFiles: stored uploads to send (set by the runtime)

    def _stored_link(self, media: dict) -> str | None:
        """A stored upload goes by a signed link WASender fetches (absolute, under
        PUBLIC_BASE_URL for Baton's own store: WASender must be able to reach it)."""
        if not media.get("storage_key") or self.media_files is None:
            return None
        try:
            return self.media_files.link(media["storage_key"], media.get("mime_type") or "application/octet-stream",
                                         media.get("filename"))
        except StorageError as exc:
            raise SendError("storage", f"signing the file's link: {exc}"[:400], retryable=True,
                            stage=NOT_SENT) from None

    def show_typing(self, phone_number_id: str, to: str, provider_message_id: str) -> None:
        """Show "typing…" in the customer's chat (WASender has no read-receipt call)."""
        self._request("POST", f"{self.api_base}/api/send-presence-update",
                      json={"jid": to if "@" in to else f"{to}@s.whatsapp.net", "type": "composing"})

    def open_media(self, media: dict) -> MediaDownload:
        """Download inbound media. WhatsApp-Web media is encrypted: WASender's
        `/api/decrypt-media` (with the API key) takes the payload's media key and
        encrypted URL as data and answers with a `publicUrl`, valid an hour,
        which is downloaded WITHOUT the API key. Baton itself never fetches a
        URL taken from a payload, so media without a media key cannot be fetched."""
        url, key, kind = media.get("url"), media.get("media_key"), media.get("message_type")
        if not (url and key and kind):
            raise SendError("no_media_key", "media without url, media key and kind cannot be decrypted",
                            retryable=False)
        request = {"data": {"messages": {
            "key": {"id": media.get("provider_media_id")},
            "message": {kind: {"url": url, "mimetype": media.get("mime_type"), "mediaKey": key}},
        }}}
        decrypted = _json(self._request("POST", f"{self.api_base}/api/decrypt-media", json=request))
        public_url = decrypted.get("publicUrl")
        if not isinstance(public_url, str) or not public_url.startswith(("https://", "http://")):
            raise SendError("invalid_response", "decrypt-media without publicUrl", retryable=False)
        try:
            response = self.session.get(public_url, stream=True, timeout=self.timeout)   # no API key
        except requests.RequestException as exc:
            raise transport_error(exc) from None
        if response.status_code >= 400:
            try:
                raise SendError(response.status_code, response.reason or f"HTTP {response.status_code}",
                                retryable=response.status_code in (404, 410, 429) or response.status_code >= 500)
            finally:
                response.close()
        return MediaDownload(response=response, declared_size=content_length(response),
                             mime_type=media.get("mime_type") or response.headers.get(
                                 "Content-Type", "application/octet-stream"))

    def _request(self, method: str, url: str, json: dict | None = None) -> requests.Response:
        try:
            response = self.session.request(method, url, json=json, timeout=self.timeout,
                                            headers={"Authorization": f"Bearer {self.api_key}"})
        except requests.RequestException as exc:
            raise transport_error(exc) from None
        if response.status_code >= 400:
            payload = _json(response)
            retry_after = payload.get("retry_after") or response.headers.get("Retry-After")
            try:
                retry_after = float(retry_after) if retry_after is not None else None
            except (TypeError, ValueError):
                retry_after = None
            raise SendError(response.status_code,
                            str(payload.get("message") or response.reason or "error"),
                            retryable=response.status_code == 429 or response.status_code >= 500,
                            retry_after=retry_after)
        return response


def _json(response: requests.Response) -> dict:
    try:
        return _dict(response.json())
    except ValueError:
        return {}


def _recipient(to: str) -> str:
    """WASender wants E.164 with '+'; JIDs (groups, newsletters) pass through."""
    return to if to.startswith("+") or "@" in to else f"+{to}"


def _ack_status(ack: Any) -> str | None:
    if isinstance(ack, str):
        ack = _NAMED_ACKS.get(ack.upper(), int(ack) if ack.isdecimal() else None)
    return ACK_STATUS.get(ack) if isinstance(ack, int) and not isinstance(ack, bool) else None


def _receipt_status(receipt: dict) -> tuple[str | None, Any]:
    for field_name, status in (("playedTimestamp", "played"), ("readTimestamp", "read"),
                               ("receiptTimestamp", "delivered")):
        if receipt.get(field_name) is not None:
            return status, receipt[field_name]
    return None, None


def _unwrap(message: dict) -> dict:
    for _ in range(3):  # wrappers nest at most a couple of levels
        wrapper = next((w for w in _WRAPPERS if isinstance(message.get(w), dict)), None)
        if wrapper is None:
            return message
        inner = message[wrapper].get("message")
        message = _dict(inner if inner is not None else message[wrapper])
    return message


def _content(message: dict) -> tuple[str, str | None, dict | None]:
    """Return (type, text, media) from a Baileys message dict."""
    name = next((n for n in message if n in _MESSAGE_KINDS), None)
    if name is None:
        return "unsupported", None, None
    kind, body = _MESSAGE_KINDS[name], message[name]
    if name == "conversation":
        return kind, body if isinstance(body, str) else None, None
    body = _dict(body)
    if kind in MEDIA_TYPES:
        media = {target: body[source] for target, source in (
            ("mime_type", "mimetype"), ("url", "url"), ("sha256", "fileSha256"),
            ("filename", "fileName"), ("media_key", "mediaKey"), ("animated", "isAnimated")) if body.get(source)}
        media["message_type"] = name
        return kind, body.get("caption"), media
    if kind == "location":
        return kind, ", ".join(str(body[k]) for k in ("name", "address") if body.get(k)) or None, None
    text = (body.get("text") or body.get("caption") or body.get("name")
            or body.get("selectedDisplayText") or _dict(body.get("singleSelectReply")).get("title")
            or body.get("displayName") or body.get("title"))
    return kind, text or None, None
