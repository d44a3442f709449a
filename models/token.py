"""API tokens: random secrets shown once, stored as SHA-256 hashes."""
import hashlib
import secrets

from peewee import CharField, DateTimeField

from .base import BaseModel, new_id, utcnow

ROLES = ("bot", "agent", "supervisor", "admin")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("tk"))
    name = CharField(max_length=120)
    role = CharField(max_length=12)
    token_hash = CharField(max_length=64, unique=True)
    agent_id = CharField(max_length=40, null=True)
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField(null=True)

    @classmethod
    def issue(cls, name: str, role: str, agent_id: str | None = None) -> tuple["ApiToken", str]:
        """Create a token; returns the row and the secret (never stored)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        secret = "bt_" + secrets.token_urlsafe(32)
        row = cls.create(name=name, role=role, token_hash=hash_token(secret), agent_id=agent_id)
        return row, secret
