"""The connections and collaborators every Baton process needs.

`Runtime.build(settings)` binds the database and creates the Redis client,
queues, lanes and provider adapter once per process: the Flask app hangs it on
`app.extensions["baton"]`; workers get it from `jobs.context`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from redis import Redis
from rq import Queue

import models
from config import Settings
from routing.decide import Policy
from routing.escalation import load_phrases
from routing.lanes import LANES, Lanes, PumpClaim

PUMP_JOB_TIMEOUT = 600


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    lanes: Lanes
    queues: dict[str, Queue]
    adapter: object
    policy: Policy
    caches: dict = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> "Runtime":
        from integrations.whatsapp import make_adapter

        models.bind(settings.DATABASE_URL)
        redis = Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2,
                               health_check_interval=30)
        queues = {name: Queue(queue_name(settings, name), connection=redis)
                  for name in (*LANES, "default")}
        policy = Policy(phrases=load_phrases(settings.ESCALATION_PHRASES_FILE or None),
                        pending_notice_interval=timedelta(seconds=settings.PENDING_NOTICE_INTERVAL),
                        default_group=settings.DEFAULT_GROUP)
        return cls(settings=settings, redis=redis,
                   lanes=Lanes(redis, settings.REDIS_PREFIX, settings.PUMP_CONCURRENCY, settings.PUMP_LEASE),
                   queues=queues, adapter=make_adapter(settings), policy=policy)

    def start_pump(self, claim: PumpClaim | None) -> None:
        """Enqueue the pump job a `Lanes.schedule*` call asked for (None: a pump already runs)."""
        if claim is None:
            return
        self.queues[claim.lane].enqueue("jobs.pump.pump", claim.lane, claim.token,
                                        job_timeout=PUMP_JOB_TIMEOUT, result_ttl=0, failure_ttl=7 * 86400)

    def schedule(self, lane: str, key: str) -> None:
        self.start_pump(self.lanes.schedule(lane, key))


def queue_name(settings: Settings, lane: str) -> str:
    return f"{settings.REDIS_PREFIX}-{lane}"
