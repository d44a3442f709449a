"""A fake Meta Graph API speaking the WhatsApp Cloud API wire protocol over real HTTP.

Routes: POST /<version>/<phone_number_id>/messages, POST /<version>/<phone_number_id>/media
(a multipart upload; `.uploads` keeps what came), GET /<version>/<media_id>,
the media download URL that lookup returns (which needs the token too), and
GET /<version>/<waba_id>/message_templates (paged by `after`, with `paging.next`).
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import time

from flask import Response, jsonify, request

from .server import FakeServer, MediaStore


def graph_error(status: int, code: int, message: str, error_type: str = "OAuthException"):
    """A response shaped like Graph's `{"error": {...}}` body."""
    body = {"error": {"message": message, "type": error_type, "code": code,
                      "error_data": {"messaging_product": "whatsapp", "details": message},
                      "fbtrace_id": secrets.token_urlsafe(12)}}
    return jsonify(body), status


class FakeGraphApi(FakeServer):
    """Graph API fake. Use `.api_base` as the adapter's api_base and `.access_token` as its token."""

    def __init__(self, access_token: str = "graph-test-token", version: str = "v23.0"):
        super().__init__("fake_graph_api")
        self.access_token = access_token
        self.version = version
        self.media_url_ttl = 300.0       # seconds a lookup's download URL works (Meta: five minutes)
        self._media = MediaStore()
        self.app.add_url_rule("/<version>/<phone_number_id>/messages", view_func=self._messages,
                              methods=["POST"])
        self.app.add_url_rule("/<version>/<phone_number_id>/media", view_func=self._media_upload,
                              methods=["POST"])
        self.uploads: dict[str, dict] = {}   # media id -> {phone_number_id, type, filename, mime, content}
        self.app.add_url_rule("/<version>/<media_id>", view_func=self._media_lookup, methods=["GET"])
        self.app.add_url_rule("/lookaside/<media_id>/content", view_func=self._media_download,
                              methods=["GET"])
        self._templates: dict[str, tuple[list[dict], int]] = {}
        self.app.add_url_rule("/<version>/<waba_id>/message_templates", view_func=self._message_templates,
                              methods=["GET"])

    @property
    def api_base(self) -> str:
        return f"{self.url}/{self.version}"

    def add_media(self, media_id: str, content: bytes, mime: str) -> None:
        """Make `media_id` resolvable and downloadable."""
        self._media.put(media_id, content, mime)

    def set_templates(self, waba_id: str, templates: list[dict], page_size: int = 25) -> None:
        """The WhatsApp Business Account `waba_id` has these templates (Graph's entries), listed
        `page_size` to a page."""
        self._templates[waba_id] = (list(templates), page_size)

    def _unauthorized(self):
        if self.bearer_token() == self.access_token:
            return None
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")

    def _messages(self, version: str, phone_number_id: str):
        if (denied := self._unauthorized()) is not None:
            return denied
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return graph_error(400, 100, "(#100) The parameter messaging_product is required.")
        if body.get("status") == "read" and body.get("message_id"):
            return jsonify({"success": True})  # mark-as-read / typing indicator
        # A phone number in `to`, or a business-scoped user id in `recipient` (2026); `to` wins.
        if not (body.get("to") or body.get("recipient")) or not body.get("type"):
            return graph_error(400, 100, "(#100) Invalid parameter")
        if body.get("to"):
            contact = {"input": body["to"], "wa_id": str(body["to"]).lstrip("+")}
        else:
            contact = {"input": body["recipient"], "user_id": body["recipient"]}
        return jsonify({"messaging_product": "whatsapp", "contacts": [contact],
                        "messages": [{"id": f"wamid.{secrets.token_urlsafe(24)}"}]})

    def _media_upload(self, version: str, phone_number_id: str):
        """Meta's media upload: multipart `messaging_product=whatsapp`, `type` (the MIME type), `file`."""
        if (denied := self._unauthorized()) is not None:
            return denied
        file = request.files.get("file")
        if request.form.get("messaging_product") != "whatsapp" or not request.form.get("type") or file is None:
            return graph_error(400, 100, "(#100) The parameter messaging_product, type and file are required.")
        media_id = str(secrets.randbelow(10**15) + 10**15)
        content = file.read()
        self.uploads[media_id] = {"phone_number_id": phone_number_id, "type": request.form["type"],
                                  "filename": file.filename, "mime": file.mimetype, "content": content}
        self._media.put(media_id, content, request.form["type"])
        return jsonify({"id": media_id})

    def _media_lookup(self, version: str, media_id: str):
        if (denied := self._unauthorized()) is not None:
            return denied
        media = self._media.get(media_id)
        if media is None:
            return graph_error(400, 100, f"Unsupported get request. Object with ID '{media_id}' "
                                         "does not exist", "GraphMethodException")
        content, mime = media
        return jsonify({"messaging_product": "whatsapp",
                        "url": f"{self.url}/lookaside/{media_id}/content?exp={time.time() + self.media_url_ttl}",
                        "mime_type": mime,
                        "sha256": base64.b64encode(hashlib.sha256(content).digest()).decode(),
                        "file_size": len(content), "id": media_id})

    def _media_download(self, media_id: str):
        if self.bearer_token() != self.access_token:
            return Response(b"", 401)  # the real lookaside host also refuses without the token
        if float(request.args.get("exp") or 0) < time.time():
            return Response(b"", 404)  # an expired URL: look the media id up again
        return self._media.download(media_id)

    def _message_templates(self, version: str, waba_id: str):
        if (denied := self._unauthorized()) is not None:
            return denied
        if waba_id not in self._templates:
            return graph_error(400, 100, f"Unsupported get request. Object with ID '{waba_id}' does not exist",
                               "GraphMethodException")
        templates, page_size = self._templates[waba_id]
        start = int(request.args.get("after") or 0)
        size = min(int(request.args.get("limit") or page_size), page_size)
        wanted = [f for f in request.args.get("fields", "").split(",") if f] or ["name", "language", "status", "id"]
        data = [{k: t[k] for k in ("id", *wanted) if k in t} for t in templates[start:start + size]]
        paging = {"cursors": {"before": str(start), "after": str(start + size)}}
        if start + size < len(templates):
            paging["next"] = (f"{self.url}/{version}/{waba_id}/message_templates?fields={','.join(wanted)}"
                              f"&limit={size}&after={start + size}")
        return jsonify({"data": data, "paging": paging})
