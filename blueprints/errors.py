"""One error shape everywhere: {"error", "message", "details"}; never a 500 for bad input."""
from __future__ import annotations

import logging

import peewee
from playhouse.pool import MaxConnectionsExceeded
from flask import Flask, jsonify, request
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "malformed_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 416: "range_not_satisfiable", 429: "rate_limited"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: dict | None = None, headers=None):
    response = jsonify({"error": code, "message": message, "details": details or {}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def init_app(app: Flask) -> None:
    @app.before_request
    def _no_nul_in_the_path():
        # No id holds a NUL byte (and PostgreSQL cannot even compare one): such a path names nothing.
        if any(isinstance(value, str) and "\x00" in value for value in (request.view_args or {}).values()):
            return error_response(404, "not_found", "Nothing has an id with a NUL byte in it.")

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    from routing.errors import DomainError

    @app.errorhandler(DomainError)
    def _refused(exc: DomainError):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return error_response(422, "validation_failed", "The request body breaks a rule; see details.",
                              exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages})

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = _HTTP_CODES.get(exc.code, "http_error")
        message = exc.description or exc.name
        if exc.code == 413:
            message = "The request body is larger than this endpoint accepts."
        # Keep werkzeug's headers (a 405's Allow, RFC 9110 15.5.6) but not its HTML content type.
        headers = {key: value for key, value in exc.get_headers() if key.lower() != "content-type"}
        return error_response(exc.code, code, message, headers=headers)

    @app.errorhandler(MaxConnectionsExceeded)
    @app.errorhandler(peewee.OperationalError)
    @app.errorhandler(peewee.InterfaceError)
    def _database_down(exc):
        log.error("database unavailable: %s", exc)
        return error_response(503, "database_unavailable", "The database is unavailable; retry shortly.",
                              headers={"Retry-After": "5"})

    @app.errorhandler(RedisError)
    def _redis_down(exc):
        log.error("redis unavailable: %s", exc)
        return error_response(503, "redis_unavailable", "Redis is unavailable; retry shortly.",
                              headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
