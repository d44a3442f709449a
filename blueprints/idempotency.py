"""`Idempotency-Key` on write calls: a repeat within 24 h returns the first
answer and does nothing again. Answers are kept in Redis per token."""
from __future__ import annotations

import hashlib
from functools import wraps

import orjson
from flask import current_app, g, request

from .api import view_meta
from .errors import ApiError

TTL_SECONDS = 24 * 3600
IN_FLIGHT_SECONDS = 60


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
            rt.redis.delete(redis_key)
            raise
        if response.status_code < 500:
            rt.redis.set(redis_key, orjson.dumps({"status": response.status_code,
                                                  "body": response.get_data(as_text=True)}), ex=TTL_SECONDS)
        else:
            rt.redis.delete(redis_key)
        return response
    view_meta(wrapper)["idempotent"] = True     # documents the header and its error codes
    return wrapper
