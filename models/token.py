"""API tokens: random secrets shown once, stored as SHA-256 hashes."""
import hashlib
import secrets

from peewee import CharField, DateTimeField

from .base import BaseModel, isoformat, new_id, utcnow, write_transaction

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

    @classmethod
    def revoke(cls, token_id: str) -> "ApiToken | None":
        """Revoke a token (a no-op when it is already revoked); the row as it is now, None when unknown."""
        if cls.get_or_none(cls.id == token_id) is None:
            return None
        with write_transaction():
            cls.update(revoked_at=utcnow()).where((cls.id == token_id) & cls.revoked_at.is_null()).execute()
        return cls.get_by_id(token_id)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict:
        """What may be shown about a token: never its secret, nor its hash."""
        return {"id": self.id, "name": self.name, "role": self.role, "agent_id": self.agent_id,
                "created_at": isoformat(self.created_at), "revoked_at": isoformat(self.revoked_at)}
