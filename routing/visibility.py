"""Who may see a conversation: one rule for the REST API and the live stream.

Agents see the pending conversations of their groups and the conversations
offered or assigned to them; supervisors, admins and bots see everything.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.conversation import PENDING_AGENT


@dataclass(frozen=True)
class Viewer:
    role: str                          # bot | agent | supervisor | admin
    agent_id: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def sees_all(self) -> bool:
        return self.role != "agent"


def may_see(viewer: Viewer, *, state: str, group: str | None, assigned_agent_id: str | None,
            offered_agent_id: str | None) -> bool:
    if viewer.sees_all:
        return True
    if viewer.agent_id and viewer.agent_id in (assigned_agent_id, offered_agent_id):
        return True
    return state == PENDING_AGENT and group in viewer.groups


def snapshot(conv) -> dict:
    """The fields visibility depends on, from a Conversation row."""
    return {"state": conv.state, "group": conv.group, "assigned_agent_id": conv.assigned_agent_id,
            "offered_agent_id": conv.offered_agent_id}


def audience(*snapshots: dict) -> dict:
    """Who should hear about a change, given the conversation before and/or
    after it (dicts with state, group, assigned_agent_id, offered_agent_id):
    an agent who could see either side learns that it changed."""
    agents: list[str] = []
    groups: list[str] = []
    for snap in snapshots:
        for key in ("assigned_agent_id", "offered_agent_id"):
            if snap.get(key) and snap[key] not in agents:
                agents.append(snap[key])
        if snap.get("state") == PENDING_AGENT and snap.get("group") and snap["group"] not in groups:
            groups.append(snap["group"])
    return {"agents": agents, "groups": groups}


def may_hear(viewer: Viewer, audience_: dict) -> bool:
    """May `viewer` receive a live event addressed to `audience_`?"""
    if viewer.sees_all:
        return True
    if viewer.agent_id and viewer.agent_id in audience_.get("agents", ()):
        return True
    return any(group in viewer.groups for group in audience_.get("groups", ()))
