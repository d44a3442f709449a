"""What every media store offers (`Storage`), its errors, and the rules all of them share.

Objects are addressed by their content: `content_key(sha256)` is the only way a key comes
to exist, so nothing a customer controls (a file name, a caption, a provider id) ever
reaches a path or an object name. Every backend refuses a key that is not of that form
(`check_key`) and bytes that do not hash to their key, so one key always means one content
and a repeated `put` is harmless.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import BinaryIO, Iterator, Protocol
from urllib.parse import quote

CHUNK = 1024 * 1024
_KEY = re.compile(r"sha256/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")

# Shown in the browser (Content-Disposition: inline); anything else downloads (attachment), so
# a customer's HTML or SVG never runs as a page of the origin that serves it.
INLINE_TYPES = re.compile(r"(image/(jpeg|png|gif|webp)|audio/[\w.+-]+|video/[\w.+-]+)")


class StorageError(Exception):
    """A refused key or content, or a store that cannot do what was asked."""


class ObjectMissing(StorageError):
    """No object under that key."""


class StorageUnavailable(StorageError):
    """The store does not answer (disk unwritable, S3 unreachable or refusing us)."""


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
    """`sha256/<2 hex>/<2 hex>/<64 hex>`: the key of the content whose SHA-256 is `sha256_hex`."""
    digest = str(sha256_hex).strip().lower()
    if not _HEX.fullmatch(digest):
        raise StorageError(f"not a SHA-256 hex digest: {sha256_hex!r}")
    return f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"


def check_key(key: str) -> str:
    """The key's digest; StorageError for anything that is not exactly a `content_key`."""
    match = _KEY.fullmatch(key) if isinstance(key, str) else None
    if match is None or match.group(1) + match.group(2) != match.group(3)[:4]:
        raise StorageError(f"refused key {str(key)[:100]!r}: keys are content_key(sha256) only")
    return match.group(3)


def chunks(data: bytes | BinaryIO) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    while True:
        block = data.read(CHUNK)
        if not block:
            return
        yield block


def copy_verified(key: str, data: bytes | BinaryIO, out: BinaryIO) -> int:
    """Write `data` to `out`, checking that it hashes to `key`; returns its size."""
    digest = check_key(key)
    hasher, size = hashlib.sha256(), 0
    for block in chunks(data):
        hasher.update(block)
        out.write(block)
        size += len(block)
    if hasher.hexdigest() != digest:
        raise StorageError(f"the bytes hash to {hasher.hexdigest()}, not to the key {key}")
    return size


def safe_filename(filename: str | None) -> str | None:
    """A display name fit for a header: no directories, no control characters, at most 150 characters."""
    if not filename:
        return None
    name = unicodedata.normalize("NFC", str(filename)).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:150] or None


def content_disposition(content_type: str, filename: str | None) -> str:
    """RFC 6266: `inline` for pictures, audio and video, `attachment` otherwise; an ASCII
    `filename` for old clients and the exact name in `filename*` (RFC 5987, UTF-8)."""
    kind = "inline" if INLINE_TYPES.fullmatch((content_type or "").split(";")[0].strip().lower()) else "attachment"
    name = safe_filename(filename)
    if name is None:
        return kind
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;%' else "_" for ch in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
