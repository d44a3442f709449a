"""A human who answers customers: role, groups, capacity and chosen status.

Whether an agent is *online for assignment* is not stored here: it is the
chosen `status` AND a heartbeat younger than AGENT_HEARTBEAT_TTL, which lives
in Redis (see routing.presence), so a lapsed heartbeat takes an agent out of
the rotation without anyone editing a row.
"""
from peewee import CharField, DateTimeField, IntegerField

from .base import BaseModel, JSONField, isoformat, new_id, utcnow

AGENT_ROLES = ("agent", "supervisor", "admin")
STATUSES = ("online", "away", "offline")


class Agent(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("a"))
    name = CharField(max_length=120)
    role = CharField(max_length=12, default="agent")
    groups = JSONField(default=list)
    max_concurrent = IntegerField(default=5)
    status = CharField(max_length=12, default="offline")
    last_assigned_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)
    deactivated_at = DateTimeField(null=True)     # set once, by routing.deactivation; never offered again

    @property
    def active(self) -> bool:
        return self.deactivated_at is None

    def in_group(self, group: str | None) -> bool:
        return group is not None and group in (self.groups or [])

    def to_dict(self, *, online: bool | None = None, load: int | None = None) -> dict:
        out = {"id": self.id, "name": self.name, "role": self.role, "groups": list(self.groups or []),
               "max_concurrent": self.max_concurrent, "status": self.status,
               "last_assigned_at": isoformat(self.last_assigned_at), "created_at": isoformat(self.created_at)}
        if online is not None:
            out["online"] = online
        if load is not None:
            out["active_conversations"] = load
        return out
