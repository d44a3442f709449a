"""Request validation and OpenAPI documentation from the same marshmallow schemas.

`@body(Schema)` / `@query(Schema)` validate and pass the loaded data to the view
as `data` / `args`; `@responds(...)` documents answers. `build_spec(app)` walks
the URL map and turns those annotations into `/openapi.json`.
"""
from __future__ import annotations

import re
from functools import wraps

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, request

from .errors import ApiError

_META = "_openapi"


def _meta(view) -> dict:
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
        _meta(wrapper)["body_optional"] = optional
        return wrapper
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
    def decorator(view):
        _meta(view)["responses"][status] = (schema_cls, description, content_type)
        return view
    return decorator


def _copy_meta(view, wrapper) -> dict:
    meta = _meta(view)
    setattr(wrapper, _META, meta)
    return meta


_ERRORS = {400: "Malformed request", 401: "Missing or bad token/signature", 403: "Role or ownership",
           404: "Unknown id", 409: "State conflict", 413: "Too large", 422: "Breaks a rule",
           503: "A dependency is down (see Retry-After)"}


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
                operation["requestBody"] = {"required": not meta.get("body_optional"), "content": {
                    "application/json": {"schema": meta["body"]}}}
            parameters = [{"in": "path", "name": arg, "required": True, "schema": {"type": "string"}}
                          for arg in sorted(rule.arguments)]
            if "query" in meta:
                parameters.append({"in": "query", "schema": meta["query"]})
            if parameters:
                operation["parameters"] = parameters
            for status, (schema_cls, description, content_type) in sorted(meta["responses"].items()):
                response: dict = {"description": description or "OK"}
                if schema_cls is not None:
                    response["content"] = {content_type: {"schema": schema_cls}}
                operation["responses"][str(status)] = response
            for status in meta.get("errors", ()):
                operation["responses"][str(status)] = {
                    "description": _ERRORS[status], "content": {"application/json": {"schema": "Error"}}}
            roles = getattr(view, "_api_roles", None)
            if roles:
                operation["security"] = [{"bearer": []}]
                operation["description"] = f"Roles: {', '.join(roles)}."
            paths.setdefault(path, {})[method.lower()] = operation
    for path, operations in sorted(paths.items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def errors(*statuses: int):
    """Document the error answers a view can give."""
    def decorator(view):
        _meta(view).setdefault("errors", []).extend(statuses)
        return view
    return decorator
