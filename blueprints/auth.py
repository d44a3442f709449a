"""Bearer tokens and roles. `admin` ⊃ `supervisor` ⊃ `agent`; `bot` stands apart."""
from __future__ import annotations

from functools import wraps

from flask import current_app, g, request

from models import ApiToken
from models.token import hash_token
from routing.auth_failures import AuthFailures

from .errors import ApiError

_IMPLIES = {"agent": {"agent", "supervisor", "admin"}, "supervisor": {"supervisor", "admin"},
            "admin": {"admin"}, "bot": {"bot"}}


def allowed_roles(*roles: str) -> set[str]:
    allowed: set[str] = set()
    for role in roles:
        allowed |= _IMPLIES[role]
    return allowed


def auth_failures() -> AuthFailures:
    """This app's failed-authentication counter (AUTH_FAILURE_LIMIT per AUTH_FAILURE_WINDOW)."""
    counter = current_app.extensions.get("baton_auth_failures")
    if counter is None:
        rt = current_app.extensions["baton"]
        s = rt.settings
        counter = current_app.extensions["baton_auth_failures"] = AuthFailures(
            rt.redis, s.REDIS_PREFIX, s.AUTH_FAILURE_LIMIT, s.AUTH_FAILURE_WINDOW)
    return counter


def client_address() -> str:
    return request.remote_addr or "unknown"


def refuse_if_locked_out() -> None:
    """429 with Retry-After while the caller's address is past AUTH_FAILURE_LIMIT."""
    wait = auth_failures().retry_after(client_address())
    if wait:
        raise ApiError(429, "too_many_auth_failures",
                       "Too many failed authentications from this address; retry after the time in Retry-After.",
                       {"retry_after": wait}, headers={"Retry-After": str(wait)})


def failed_authentication(message: str) -> ApiError:
    """Count a failed authentication of the caller's address; the 401 to raise."""
    auth_failures().record(client_address())
    return ApiError(401, "unauthorized", message)


def current_token() -> ApiToken:
    header = request.headers.get("Authorization", "")
    if header:                  # only a presented credential can be a guess
        refuse_if_locked_out()
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        if header:
            raise failed_authentication("Send `Authorization: Bearer <token>`.")
        raise ApiError(401, "unauthorized", "Send `Authorization: Bearer <token>`.")
    token = ApiToken.get_or_none(ApiToken.token_hash == hash_token(secret.strip()))
    if token is None or token.revoked_at is not None:
        raise failed_authentication("The token is unknown or revoked.")
    return token


def require(*roles: str):
    """Allow the view to tokens holding one of `roles` (with the implied ones)."""
    allowed = allowed_roles(*roles)

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            token = current_token()
            if token.role not in allowed:
                raise ApiError(403, "forbidden", f"This call needs one of the roles: {', '.join(sorted(allowed))}.",
                               {"role": token.role})
            g.token = token
            return view(*args, **kwargs)
        wrapper._api_roles = sorted(allowed)
        return wrapper
    return decorator


def current_viewer():
    """The caller as routing.visibility sees them (an agent's groups come from its row)."""
    from models import Agent
    from routing.visibility import Viewer

    token = g.token
    if "viewer" not in g:
        agent = Agent.get_or_none(Agent.id == token.agent_id) if token.agent_id else None
        g.viewer = Viewer(role=token.role, agent_id=token.agent_id,
                          groups=tuple(agent.groups or ()) if agent else ())
        g.agent = agent
    return g.viewer
