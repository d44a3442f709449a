"""Creating agents and changing their presence."""
from __future__ import annotations

from models import Agent, ApiToken, isoformat, write_transaction

from .presence import Presence


def create_agent(name: str, role: str, groups: list[str], max_concurrent: int) -> tuple[Agent, str]:
    """The agent and its API token's secret (shown once, stored hashed)."""
    with write_transaction():
        agent = Agent.create(name=name, role=role, groups=sorted(set(groups)), max_concurrent=max_concurrent,
                             status="offline")
        _, secret = ApiToken.issue(name, role, agent_id=agent.id)
    return agent, secret


def set_status(presence: Presence, agent: Agent, status: str) -> Agent:
    """Going online counts as a heartbeat; the chosen status is durable in the database."""
    with write_transaction():
        Agent.update(status=status).where(Agent.id == agent.id).execute()
    agent.status = status
    presence.heartbeat(agent.id, status)
    return agent


def heartbeat(presence: Presence, agent: Agent) -> None:
    presence.heartbeat(agent.id, agent.status)


def describe(presence: Presence, agents: list[Agent]) -> list[dict]:
    ids = [agent.id for agent in agents]
    online, loads = presence.online(ids), presence.loads(ids)
    return [{**agent.to_dict(online=online[agent.id], load=loads[agent.id]),
             "deactivated_at": isoformat(agent.deactivated_at)} for agent in agents]
