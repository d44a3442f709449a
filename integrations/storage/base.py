"""The storage interface media records are kept behind (issue 9 media contract).

PLACEHOLDER from the `mediarecords` branch: the `storage` branch owns this
package; at merge its version replaces this file.
"""
from __future__ import annotations

import re
from typing import BinaryIO, Protocol

_HEX64 = re.compile(r"[0-9a-f]{64}")


class StorageError(Exception):
    """A storage operation failed."""


class ObjectMissing(StorageError):
    """No object under this key."""


class StorageUnavailable(StorageError):
    """The store cannot be reached right now; try again later."""


class Storage(Protocol):
    def put(self, key: str, data: bytes | BinaryIO, content_type: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def open(self, key: str) -> BinaryIO: ...

    def size(self, key: str) -> int: ...

    def signed_url(self, key: str, *, ttl: int, content_type: str, filename: str | None,
                   public_base: str = "") -> str: ...

    def delete(self, key: str) -> None: ...

    def ping(self) -> None: ...


def content_key(sha256_hex: str) -> str:
    """`sha256/<2 hex>/<2 hex>/<64 hex>`: the key of a file with this (verified) checksum."""
    digest = sha256_hex.lower()
    if not _HEX64.fullmatch(digest):
        raise StorageError("a content key needs a 64-digit hex sha256")
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


def check_key(key: str) -> str:
    """`key` if it is a content key; StorageError otherwise."""
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) != 4 or parts[0] != "sha256" or not _HEX64.fullmatch(parts[3]) \
            or parts[1] != parts[3][:2] or parts[2] != parts[3][2:4]:
        raise StorageError(f"not a content key: {key!r}")
    return key
