"""Agent presence and capacity reservations, kept in Redis.

An agent is online for assignment when its chosen status is `online` AND
its heartbeat key has not expired (AGENT_HEARTBEAT_TTL): a closed laptop
drops out of the rotation by itself. The database keeps the chosen status
(durable); every heartbeat re-mirrors it, so a flushed Redis heals at the
next heartbeat.

Keys (P = REDIS_PREFIX):
  P:agent:<id>:status     chosen status (mirror of agents.status)
  P:agent:<id>:hb         heartbeat, expires after AGENT_HEARTBEAT_TTL
  P:agent:<id>:load       ZSET conversation id -> reserved at (offers and assignments)
  P:assign:last           HASH agent id -> sequence number of its last offer
  P:assign:seq            the sequence
"""
from __future__ import annotations

import time

from redis import Redis


class Presence:
    def __init__(self, redis: Redis, prefix: str, heartbeat_ttl: int):
        self.redis = redis
        self.prefix = prefix
        self.heartbeat_ttl = heartbeat_ttl

    def status_key(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}:status"

    def heartbeat_key(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}:hb"

    def load_key(self, agent_id: str) -> str:
        return f"{self.prefix}:agent:{agent_id}:load"

    @property
    def last_assigned_key(self) -> str:
        return f"{self.prefix}:assign:last"

    @property
    def sequence_key(self) -> str:
        return f"{self.prefix}:assign:seq"

    def set_status(self, agent_id: str, status: str) -> None:
        self.redis.set(self.status_key(agent_id), status)

    def heartbeat(self, agent_id: str, status: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.status_key(agent_id), status)
        pipe.set(self.heartbeat_key(agent_id), int(time.time()), ex=self.heartbeat_ttl)
        pipe.execute()

    def online(self, agent_ids: list[str]) -> dict[str, bool]:
        if not agent_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.get(self.status_key(agent_id))
            pipe.exists(self.heartbeat_key(agent_id))
        replies = pipe.execute()
        return {agent_id: replies[2 * i] == b"online" and bool(replies[2 * i + 1])
                for i, agent_id in enumerate(agent_ids)}

    def loads(self, agent_ids: list[str]) -> dict[str, int]:
        if not agent_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.zcard(self.load_key(agent_id))
        return dict(zip(agent_ids, pipe.execute()))
