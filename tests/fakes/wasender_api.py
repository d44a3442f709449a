"""A fake WasenderAPI speaking its wire protocol over real HTTP.

Routes: POST /api/send-message, POST /api/decrypt-media, GET /api/decrypted-media/<id>,
and GET /mms/<id>.enc standing in for WhatsApp's encrypted media host.
"""
from __future__ import annotations

import itertools

from flask import Response, jsonify, request

from .server import FakeServer, MediaStore

MEDIA_URL_FIELDS = ("imageUrl", "videoUrl", "documentUrl", "audioUrl", "stickerUrl")


class FakeWasenderApi(FakeServer):
    """WASender fake. Use `.url` as the adapter's api_base and `.api_key` as its key."""

    def __init__(self, api_key: str = "wasender-test-key"):
        super().__init__("fake_wasender_api")
        self.api_key = api_key
        self._msg_ids = itertools.count(100000)
        self._media = MediaStore()
        self.app.add_url_rule("/api/send-message", view_func=self._send, methods=["POST"])
        self.app.add_url_rule("/api/send-presence-update", view_func=self._presence, methods=["POST"])
        self.app.add_url_rule("/api/decrypt-media", view_func=self._decrypt, methods=["POST"])
        self.app.add_url_rule("/api/decrypted-media/<message_id>", view_func=self._decrypted,
                              methods=["GET"])
        self.app.add_url_rule("/mms/<message_id>.enc", view_func=self._encrypted, methods=["GET"])

    def add_media(self, message_id: str, content: bytes, mime: str) -> str:
        """Register media of an inbound message; returns its (encrypted) WhatsApp URL."""
        self._media.put(message_id, content, mime)
        return f"{self.url}/mms/{message_id}.enc"

    def _unauthorized(self):
        if self.bearer_token() == self.api_key:
            return None
        return jsonify({"success": False, "message": "Unauthenticated."}), 401

    def _presence(self):
        if (denied := self._unauthorized()) is not None:
            return denied
        body = request.get_json(silent=True) or {}
        if not str(body.get("jid", "")).endswith("@s.whatsapp.net") or body.get("type") not in (
                "composing", "recording", "available", "unavailable"):
            return jsonify({"success": False, "message": "Validation failed"}), 422
        return jsonify({"success": True, "data": {"jid": body["jid"], "type": body["type"]}})

    def _send(self):
        if (denied := self._unauthorized()) is not None:
            return denied
        body = request.get_json(silent=True) or {}
        errors = {}
        if not body.get("to"):
            errors["to"] = ["The to field is required."]
        if not body.get("text") and not any(body.get(f) for f in MEDIA_URL_FIELDS):
            errors["text"] = ["The text field is required when no media is present."]
        if errors:
            return jsonify({"success": False, "message": "Validation failed", "errors": errors}), 422
        with self._lock:
            msg_id = next(self._msg_ids)
        return jsonify({"success": True,
                        "data": {"msgId": msg_id, "jid": body["to"], "status": "in_progress"}})

    def _decrypt(self):
        if (denied := self._unauthorized()) is not None:
            return denied
        messages = ((request.get_json(silent=True) or {}).get("data") or {}).get("messages") or {}
        message_id = (messages.get("key") or {}).get("id")
        if self._media.get(message_id) is None:
            return jsonify({"success": False, "message": "Failed to decrypt media"}), 422
        return jsonify({"publicUrl": f"{self.url}/api/decrypted-media/{message_id}"})

    def _decrypted(self, message_id: str):
        return self._media.download(message_id)

    def _encrypted(self, message_id: str):
        # Stands in for mmg.whatsapp.net: bytes nobody can use without the media key.
        known = self._media.get(message_id) is not None
        return Response(b"\x00encrypted\x00" if known else b"", 200 if known else 404,
                        mimetype="application/octet-stream")
