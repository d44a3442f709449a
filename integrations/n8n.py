"""Posting Baton events to n8n webhooks, signed with BATON_EVENT_SECRET."""
from __future__ import annotations

import requests

from .signing import signature


class DeliveryFailed(Exception):
    """n8n did not take the event (non-2xx, timeout, connection error)."""


def post_event(session: requests.Session, url: str, body: bytes, *, event_type: str, delivery_id: str,
               secret: str, timeout: float) -> int:
    """POST one event; returns the HTTP status or raises DeliveryFailed."""
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Baton-Event": event_type,
               "X-Baton-Delivery": delivery_id, "X-Baton-Signature": signature(secret, body),
               "User-Agent": "Baton/1.0"}
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:500]) from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.status_code
