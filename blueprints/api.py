"""Request validation, answers and OpenAPI documentation from the same marshmallow schemas.

`@body(Schema)` / `@query(Schema)` validate and pass the loaded data to the view
as `data` / `args`; `@responds(status, Schema)` documents an answer and
`reply(obj, status)` sends it, dumped through that very schema, so what a
client receives is what the document says. `@errors(...)` documents the error
answers (with their codes). `build_spec(app)` walks the URL map and turns those
annotations into `/openapi.json`.
"""
from __future__ import annotations

import re
from functools import wraps

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, Response, current_app, request

from .errors import ApiError
from .schemas import ResponseDrift

_META = "_openapi"


def view_meta(view) -> dict:
    """The documentation a view carries (shared by every decorator wrapping it)."""
    if not hasattr(view, _META):
        setattr(view, _META, {"responses": {}})
    return getattr(view, _META)


def body(schema_cls, optional: bool = False):
    """`optional`: an empty body counts as `{}` (calls whose fields are all optional)."""
    schema = schema_cls()

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            payload = request.get_json(silent=True)
            if payload is None and optional and not request.get_data(cache=True).strip():
                payload = {}
            if payload is None:
                raise ApiError(400, "malformed_json", "The body must be a JSON object.")
            if not isinstance(payload, dict):
                raise ApiError(400, "malformed_json", "The body must be a JSON object, not a list or scalar.")
            return view(*args, data=schema.load(payload), **kwargs)
        _copy_meta(view, wrapper)["body"] = schema_cls
        view_meta(wrapper)["body_optional"] = optional
        return wrapper
    return decorator


def raw_body(content_type: str, schema: dict):
    """Document a body the view reads itself (an upload), as an OpenAPI schema."""
    def decorator(view):
        view_meta(view)["raw_body"] = (content_type, schema)
        return view
    return decorator


def query(schema_cls):
    schema = schema_cls()

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            return view(*args, args=schema.load(request.args.to_dict()), **kwargs)
        _copy_meta(view, wrapper)["query"] = schema_cls
        return wrapper
    return decorator


def responds(status: int, schema_cls=None, description: str = "", content_type: str = "application/json"):
    """Document an answer. A JSON answer with a schema is sent with `reply(obj, status)`."""
    def decorator(view):
        view_meta(view)["responses"][status] = (schema_cls, description, content_type)
        return view
    return decorator


def errors(*statuses: int, codes: dict[int, tuple[str, ...]] | None = None):
    """Document the error answers a view can give, and the `error` codes each may carry
    (the codes of the mechanisms it uses, such as auth or a JSON body, are added by build_spec)."""
    def decorator(view):
        documented = view_meta(view).setdefault("errors", {})
        for status in (*statuses, *(codes or {})):
            documented.setdefault(status, set()).update((codes or {}).get(status, ()))
        return view
    return decorator


def _copy_meta(view, wrapper) -> dict:
    meta = view_meta(view)
    setattr(wrapper, _META, meta)
    return meta


_SCHEMAS: dict[type, object] = {}


def reply(obj, status: int = 200, headers: dict | None = None) -> Response:
    """Answer with `obj` dumped through the schema this view documents for `status`
    (`@responds`). Answering a status the view does not document, or with keys its
    schema does not declare, raises `ResponseDrift` (a 500): the document and what
    clients receive cannot differ."""
    view = current_app.view_functions[request.endpoint]
    documented = view_meta(view)["responses"].get(status)
    if documented is None:
        raise ResponseDrift(f"{request.endpoint} answered {status}, which it does not document with @responds")
    schema_cls = documented[0]
    if schema_cls is None:
        if obj is not None:
            raise ResponseDrift(f"{request.endpoint} documents no body for {status}")
        response = current_app.response_class(status=status)
    else:
        schema = _SCHEMAS.get(schema_cls) or _SCHEMAS.setdefault(schema_cls, schema_cls())
        response = current_app.json.response(schema.dump(obj))
        response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


_ERRORS = {400: "Malformed request", 401: "Missing or bad token/signature", 403: "Role or ownership",
           404: "Unknown id", 409: "State conflict", 413: "Too large", 415: "Unsupported media type", 422: "Breaks a rule",
           429: "Too many failed authentications from this address (see Retry-After)",
           503: "A dependency is down (see Retry-After)"}

# Error codes that come with a mechanism rather than with one view.
_AUTH_CODES = {401: {"unauthorized"}, 403: {"forbidden"}, 429: {"too_many_auth_failures"}}
_BODY_CODES = {400: {"malformed_json"}, 422: {"validation_failed"}}
_QUERY_CODES = {422: {"validation_failed"}}
_IDEMPOTENCY_CODES = {400: {"bad_idempotency_key"}, 409: {"idempotency_in_progress"}}
_DEPENDENCY_CODES = {503: {"database_unavailable", "redis_unavailable"}}
_TEXT_SCHEMA = {"type": "string"}


def _error_codes(meta: dict, roles) -> dict[int, set[str]]:
    documented = {status: set(codes) for status, codes in meta.get("errors", {}).items()}
    implied = [_AUTH_CODES if roles else {}, _BODY_CODES if "body" in meta else {},
               _QUERY_CODES if "query" in meta else {}, _IDEMPOTENCY_CODES if meta.get("idempotent") else {}]
    for codes in implied:
        for status, names in codes.items():
            documented.setdefault(status, set()).update(names)
    if 503 in documented:
        documented[503] |= _DEPENDENCY_CODES[503]
    return documented


def build_spec(app: Flask) -> dict:
    from . import schemas

    spec = APISpec(title="Baton", version="1.0.0", openapi_version="3.0.3", plugins=[MarshmallowPlugin()],
                   info={"description": "Stateful bot-to-human handoff router for WhatsApp."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    paths: dict[str, dict] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, _META, None)
        if meta is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation: dict = {"summary": (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else "",
                               "operationId": f"{rule.endpoint}.{method.lower()}", "responses": {}}
            if "body" in meta:
                body_schema = meta["body"]
                across = getattr(body_schema, "OPENAPI_RULE", None)
                if across:             # a rule across fields (exactly one of...), stated in the document too
                    body_schema = {"allOf": [body_schema], **across}
                operation["requestBody"] = {"required": not meta.get("body_optional"), "content": {
                    "application/json": {"schema": body_schema}}}
            elif "raw_body" in meta:
                content_type, body_schema = meta["raw_body"]
                operation["requestBody"] = {"required": True, "content": {content_type: {"schema": body_schema}}}
            parameters = [{"in": "path", "name": arg, "required": True, "schema": {"type": "string"},
                           "description": f"the {arg.removesuffix('_id').replace('_', ' ')}'s id"}
                          for arg in sorted(rule.arguments)]
            if "query" in meta:
                parameters.append({"in": "query", "schema": meta["query"]})
            if meta.get("idempotent"):
                parameters.append({"in": "header", "name": "Idempotency-Key", "required": False,
                                   "schema": {"type": "string", "maxLength": 200},
                                   "description": "a repeat within 24 h answers the first answer again "
                                                  "(with `Idempotent-Replayed: true`) and does nothing"})
            if parameters:
                operation["parameters"] = parameters
            for status, (schema_cls, description, content_type) in sorted(meta["responses"].items()):
                response: dict = {"description": description or "OK"}
                if schema_cls is not None:
                    response["content"] = {content_type: {"schema": schema_cls}}
                elif not content_type.startswith("application/json"):
                    response["content"] = {content_type: {"schema": _TEXT_SCHEMA}}
                operation["responses"][str(status)] = response
            roles = getattr(view, "_api_roles", None)
            for status, codes in sorted(_error_codes(meta, roles).items()):
                operation["responses"][str(status)] = {
                    "description": _ERRORS[status], "content": {"application/json": {"schema": "Error"}},
                    "x-error-codes": sorted(codes)}
            if roles:
                operation["security"] = [{"bearer": []}]
                operation["description"] = f"Roles: {', '.join(roles)}."
                operation["x-roles"] = list(roles)
            paths.setdefault(path, {})[method.lower()] = operation
    for path, operations in sorted(paths.items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()
