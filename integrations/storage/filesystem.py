"""The default media store: files under one directory (`MEDIA_STORAGE_URL=file:///abs/path`).

An object lives at `<root>/sha256/ab/cd/<digest>`. A write goes to a temporary file in the
same directory, is checked against its key, flushed to disk and renamed into place, so a
reader never sees half an object and two writers of one key leave one whole file. Baton
serves the objects itself through signed links (`links.py`, `blueprints/media_files.py`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from . import links
from .base import StorageError, ObjectMissing, StorageUnavailable, check_key, copy_verified


class FilesystemStorage:
    def __init__(self, root: str | os.PathLike, secret: str):
        self.root = Path(root)
        if not self.root.is_absolute():
            raise StorageError(f"the media directory must be an absolute path, got {str(root)!r}")
        if not secret:
            raise StorageError("SECRET_KEY is empty: the filesystem store signs its media links with it")
        self.secret = secret

    def __repr__(self) -> str:
        return f"FilesystemStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """Where `key` lives; only ever a path under the root (the key is checked first)."""
        check_key(key)
        path = self.root.joinpath(*key.split("/"))
        if os.path.commonpath([os.path.realpath(path), os.path.realpath(self.root)]) != os.path.realpath(self.root):
            raise StorageError(f"refused key {key!r}: it leads outside the store")
        return path

    def put(self, key: str, data: bytes | BinaryIO, content_type: str) -> None:
        path = self.path(key)
        if path.is_file():
            return                         # same key, same bytes: already here
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        except OSError as exc:
            raise StorageUnavailable(f"cannot write under {self.root}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                copy_verified(key, data, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o640)
            os.replace(temp, path)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        _fsync_directory(path.parent)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {key}: {exc}") from exc

    def signed_url(self, key: str, *, ttl: int, content_type: str, filename: str | None,
                   public_base: str = "") -> str:
        return links.sign(self.secret, key, ttl, content_type, filename, public_base)

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete {key}: {exc}") from exc

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create {self.root}: {exc}") from exc
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"{self.root} is not a writable directory")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform opens directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
