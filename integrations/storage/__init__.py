"""Where copies of customers' media are kept: `storage_for(settings)`.

PLACEHOLDER from the `mediarecords` branch (file:// only, no signed-URL
route): the `storage` branch builds the real package (S3, the signed
`/media/files/...` route); at merge its version replaces this one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import BinaryIO
from urllib.parse import quote, urlsplit

from .base import ObjectMissing, Storage, StorageError, StorageUnavailable, check_key, content_key  # noqa: F401


class FileStorage:
    """Objects as files under one directory (placeholder)."""

    def __init__(self, root: str):
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def put(self, key: str, data, content_type: str) -> None:
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, (bytes, bytearray)):
                    out.write(data)
                else:
                    shutil.copyfileobj(data, out)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageUnavailable(str(exc)) from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def size(self, key: str) -> int:
        try:
            return os.path.getsize(self._path(key))
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def signed_url(self, key: str, *, ttl: int, content_type: str, filename: str | None,
                   public_base: str = "") -> str:
        raise StorageError("the placeholder storage cannot sign URLs (the storage branch can)")

    def delete(self, key: str) -> None:
        try:
            os.remove(self._path(key))
        except FileNotFoundError:
            pass

    def ping(self) -> None:
        if not os.path.isdir(self.root):
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise StorageUnavailable(str(exc)) from exc


def storage_for(settings) -> Storage:
    url = settings.MEDIA_STORAGE_URL
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileStorage(parts.path)
    if parts.scheme == "s3":
        raise NotImplementedError("s3:// storage comes with the storage branch")
    raise StorageError(f"MEDIA_STORAGE_URL: unknown scheme in {quote(url)!r}")
