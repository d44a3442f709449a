"""`Idempotency-Key` on write calls: a repeat within 24 h returns the first
answer and does nothing again. Answers are kept in Redis per token."""
from __future__ import annotations

import hashlib
import logging
from functools import wraps

import orjson
from flask import current_app, g, request

from .api import view_meta
from .errors import ApiError

TTL_SECONDS = 24 * 3600
IN_FLIGHT_SECONDS = 60
log = logging.getLogger(__name__)


def _forget(rt, redis_key: str) -> None:
    """Nothing was done: a repeat may run the call again."""
    try:
        rt.redis.delete(redis_key)
    except Exception:
        log.warning("could not clear an Idempotency-Key; it lapses in %d s", IN_FLIGHT_SECONDS, exc_info=True)


def idempotent(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if not key:
            return view(*args, **kwargs)
        if len(key) > 200:
            raise ApiError(400, "bad_idempotency_key", "Idempotency-Key is limited to 200 characters.")
        rt = current_app.extensions["baton"]
        digest = hashlib.sha256(f"{request.method} {request.path} {key}".encode()).hexdigest()
        redis_key = f"{rt.settings.REDIS_PREFIX}:idem:{g.token.id}:{digest}"
        if not rt.redis.set(redis_key, b"in-flight", nx=True, ex=IN_FLIGHT_SECONDS):
            stored = rt.redis.get(redis_key)
            if stored == b"in-flight":
                raise ApiError(409, "idempotency_in_progress",
                               "A request with this Idempotency-Key is still being processed.")
            if stored is not None:
                saved = orjson.loads(stored)
                response = current_app.response_class(saved["body"], status=saved["status"],
                                                      mimetype="application/json")
                response.headers["Idempotent-Replayed"] = "true"
                return response
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except Exception:
            _forget(rt, redis_key)
            raise
        if response.status_code >= 500:
            _forget(rt, redis_key)
            return response
        try:
            rt.redis.set(redis_key, orjson.dumps({"status": response.status_code,
                                                  "body": response.get_data(as_text=True)}), ex=TTL_SECONDS)
        except Exception:
            # The change has happened: answer it (a 5xx would invite the very
            # retry that duplicates it). A repeat meets the in-flight mark (409)
            # for as long as Redis kept it.
            log.warning("could not keep the answer for Idempotency-Key %s", key, exc_info=True)
        return response
    view_meta(wrapper)["idempotent"] = True     # documents the header and its error codes
    return wrapper
