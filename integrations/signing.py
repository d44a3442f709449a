"""HMAC-SHA256 signatures over raw bytes: Meta signs webhooks this way
(`X-Hub-Signature-256: sha256=<hex>`), and Baton signs its n8n events the
same way (`X-Baton-Signature`)."""
from __future__ import annotations

import hashlib
import hmac


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex digest>` of `body` under `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, given: str | None) -> bool:
    """Constant-time check of a `sha256=<hex>` header (hex compared case-insensitively)."""
    if not secret or not given:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), given.strip().lower().encode())
