"""Agents: created by admins; presence (status + heartbeat) set by each agent."""
from __future__ import annotations

from flask import Blueprint, current_app, g

from models import Agent, CallbackRequest, Conversation, utcnow, write_transaction
from routing import agents as agent_service
from routing import deactivation
from routing.assignment import offer_waiting
from routing.errors import NotFound
from routing import timeouts

from .api import body, errors, query, reply, responds
from .auth import current_viewer, require
from .conversations import decode_cursor, encode_cursor
from .errors import ApiError
from .idempotency import idempotent
from .schemas import (AgentCreatedSchema, AgentCreateSchema, AgentListSchema, DeactivationSchema, AgentQueryArgsSchema, AgentSchema,
                      AgentStatusSchema, CallbackDoneSchema, CallbackListSchema, CallbackQueryArgsSchema,
                      CallbackRequestSchema, OnlineAgentsSchema)

bp = Blueprint("agents", __name__, url_prefix="/api/v1")


def _rt():
    return current_app.extensions["baton"]


def _me() -> Agent:
    current_viewer()
    if g.agent is None:
        raise ApiError(403, "not_an_agent", "This token belongs to no agent.")
    return g.agent


@bp.get("/agents")
@responds(200, AgentListSchema)
@errors(401, 403, 422, codes={400: ("bad_cursor",)})
@require("supervisor")
@query(AgentQueryArgsSchema)
def list_agents(args):
    """Agents with their presence and how many conversations each holds."""
    rows = Agent.select().order_by(Agent.id)
    if "cursor" in args:
        (last_id,) = decode_cursor(args["cursor"], 1)
        rows = rows.where(Agent.id > last_id)
    agents = [a for a in rows if "group" not in args or a.in_group(args["group"])]
    page = agents[:args["limit"]]
    next_cursor = encode_cursor(page[-1].id) if len(agents) > args["limit"] else None
    return reply({"items": agent_service.describe(_rt().presence, page), "next_cursor": next_cursor})


@bp.get("/agents/online")
@responds(200, OnlineAgentsSchema)
@errors(401, 403)
@require("agent")
def list_online_agents():
    """Who a conversation can be transferred to: the agents online now, and every group agents serve."""
    agents = list(Agent.select().where(Agent.deactivated_at.is_null()).order_by(Agent.name, Agent.id))
    online = [{key: described[key] for key in ("id", "name", "groups", "max_concurrent", "active_conversations")}
              for described in agent_service.describe(_rt().presence, agents) if described["online"]]
    groups = sorted({group for agent in agents for group in agent.groups or ()})
    return reply({"items": online, "groups": groups})


@bp.post("/agents")
@responds(201, AgentCreatedSchema, "Created; `token` is shown this once")
@errors(400, 401, 403, 422)
@require("admin")
@idempotent
@body(AgentCreateSchema)
def create_agent(data):
    """Add an agent (and its API token)."""
    agent, secret = agent_service.create_agent(data["name"], data["role"], data["groups"], data["max_concurrent"])
    (described,) = agent_service.describe(_rt().presence, [agent])
    return reply({**described, "token": secret}, 201)


@bp.post("/agents/<agent_id>/deactivate")
@responds(200, DeactivationSchema, "Deactivated (again: nothing left to move, counts 0)")
@errors(401, 403, codes={404: ("not_found",), 409: ("own_agent",), 503: ("conversation_busy",)})
@require("admin")
@idempotent
def deactivate_agent(agent_id):
    """Deactivate an agent: their tokens stop working at once, offers to them move on, and the
    conversations they hold go back to their group's queue, offered to the next agent."""
    if agent_id == g.token.agent_id:
        raise ApiError(409, "own_agent", "You cannot deactivate yourself; ask another admin, or use "
                                         "`flask --app app baton agent deactivate ID`.")
    rt = _rt()
    done = deactivation.deactivate_agent(rt.changes, rt.presence, agent_id)
    (described,) = agent_service.describe(rt.presence, [done.agent])
    return reply({"agent": described, "tokens_revoked": done.tokens_revoked, "offers_moved": done.offers_moved,
                  "conversations_requeued": done.conversations_requeued})


@bp.get("/agents/me")
@responds(200, AgentSchema)
@errors(401, codes={403: ("not_an_agent",)})
@require("agent")
def get_me():
    """The calling agent, with its presence."""
    (described,) = agent_service.describe(_rt().presence, [_me()])
    return reply(described)


@bp.patch("/agents/me")
@responds(200, AgentSchema)
@errors(400, 401, 422, codes={403: ("not_an_agent",), 503: ("conversation_busy",)})
@require("agent")
@idempotent
@body(AgentStatusSchema)
def set_my_status(data):
    """Go online, away or offline (online also counts as a heartbeat)."""
    rt = _rt()
    agent = agent_service.set_status(rt.presence, _me(), data["status"])
    if agent.status == "online":
        _offer_waiting(rt)
    else:       # leaving: what was offered to them moves on now, not when the offers lapse
        for conversation_id in timeouts.offers_to(agent.id):
            timeouts.expire_offer(rt.changes, conversation_id, withdrawn_from=agent.id)
    (described,) = agent_service.describe(rt.presence, [agent])
    return reply(described)


@bp.post("/agents/me/heartbeat")
@responds(200, AgentSchema)
@errors(401, codes={403: ("not_an_agent",), 503: ("conversation_busy",)})
@require("agent")
@idempotent
def heartbeat():
    """Keep the caller online for assignment for another AGENT_HEARTBEAT_TTL seconds."""
    rt = _rt()
    agent = _me()
    was_online = rt.presence.online([agent.id])[agent.id]
    agent_service.heartbeat(rt.presence, agent)
    if agent.status == "online" and not was_online:
        _offer_waiting(rt)
    (described,) = agent_service.describe(rt.presence, [agent])
    return reply(described)


def _offer_waiting(rt) -> None:
    """An agent just became available: offer what waits now, not at the next tick."""
    offer_waiting(rt.changes, rt.reservations)


@bp.get("/callbacks")
@responds(200, CallbackListSchema)
@errors(400, 401, 403, 422)
@require("agent")
@query(CallbackQueryArgsSchema)
def list_callbacks(args):
    """Callback requests recorded when nobody could take a conversation in time."""
    viewer = current_viewer()
    rows = (CallbackRequest.select().join(Conversation)
            .where(CallbackRequest.status == args["status"])
            .order_by(CallbackRequest.created_at.desc(), CallbackRequest.id.desc()))
    if not viewer.sees_all:
        rows = rows.where(CallbackRequest.group.in_(list(viewer.groups) or [""]))
    page = list(rows.limit(args["limit"]))
    return reply({"items": [c.to_dict() for c in page], "next_cursor": None})


@bp.post("/callbacks/<callback_id>/done")
@responds(200, CallbackRequestSchema, "Marked done (again: unchanged)")
@errors(400, 401, 403, 422, codes={404: ("not_found",)})
@require("agent")
@idempotent
@body(CallbackDoneSchema, optional=True)
def mark_callback_done(callback_id, data):
    """Record that the customer was called back."""
    viewer = current_viewer()
    request_ = CallbackRequest.get_or_none(CallbackRequest.id == callback_id)
    if request_ is None:
        raise NotFound("callback request")
    if not viewer.sees_all and request_.group not in viewer.groups:
        raise ApiError(403, "forbidden", "This callback request belongs to another group.",
                       {"group": request_.group})
    if request_.status == "open":
        with write_transaction():
            (CallbackRequest.update(status="done", done_at=utcnow(), done_by=viewer.agent_id or g.token.name,
                                    note=data.get("note") or request_.note)
             .where((CallbackRequest.id == callback_id) & (CallbackRequest.status == "open"))
             .execute())
        request_ = CallbackRequest.get_by_id(callback_id)
    return reply(request_.to_dict())
