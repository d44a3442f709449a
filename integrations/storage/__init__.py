"""Where copies of customers' media are kept: one interface (`base.Storage`), two backends.

`storage_for(settings)` reads MEDIA_STORAGE_URL:
- `file:///abs/path` (the default, `<repo>/instance/media`): `FilesystemStorage`; Baton serves
  its objects itself at `/media/files/<key>` through links signed with SECRET_KEY;
- `s3://bucket/prefix?endpoint_url=…&region=…&addressing_style=path|virtual`: `S3Storage`
  (boto3; credentials from boto3's usual sources; presigned GET links).
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from .base import (ObjectMissing, Storage, StorageError, StorageUnavailable, check_key, content_disposition,
                   content_key, safe_filename)

__all__ = ["ObjectMissing", "Storage", "StorageError", "StorageUnavailable", "check_key", "content_disposition",
           "content_key", "safe_filename", "storage_for", "parse_storage_url", "StorageLocation"]

S3_OPTIONS = ("endpoint_url", "region", "addressing_style")


@dataclass(frozen=True)
class StorageLocation:
    scheme: str                   # "file" or "s3"
    path: str = ""                # file: the directory
    bucket: str = ""
    prefix: str = ""
    options: tuple = ()           # s3: (name, value) pairs of S3_OPTIONS


def parse_storage_url(url: str) -> StorageLocation:
    """MEDIA_STORAGE_URL taken apart; ValueError saying what is wrong with it."""
    parts = urlsplit(url or "")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"a file URL names an absolute directory, file:///abs/path; got {url!r}")
        if parts.query:
            raise ValueError(f"a file URL takes no options; got {url!r}")
        return StorageLocation("file", path=unquote(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"an S3 URL names its bucket, s3://bucket/prefix; got {url!r}")
        options = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - set(S3_OPTIONS))
        if unknown:
            raise ValueError(f"unknown S3 option(s) {', '.join(unknown)} (known: {', '.join(S3_OPTIONS)})")
        if options.get("addressing_style", "path") not in ("path", "virtual", "auto"):
            raise ValueError("addressing_style must be path, virtual or auto")
        return StorageLocation("s3", bucket=parts.netloc, prefix=unquote(parts.path).strip("/"),
                               options=tuple(sorted((k, v) for k, v in options.items() if v)))
    raise ValueError(f"must start with file:/// or s3://, got {url!r}")


def storage_for(settings) -> Storage:
    """The store MEDIA_STORAGE_URL names (nothing is contacted until it is used)."""
    try:
        where = parse_storage_url(settings.MEDIA_STORAGE_URL)
    except ValueError as exc:
        raise StorageError(f"MEDIA_STORAGE_URL: {exc}") from None
    if where.scheme == "file":
        from .filesystem import FilesystemStorage

        return FilesystemStorage(where.path, settings.SECRET_KEY)
    from .s3 import S3Storage

    return S3Storage(where.bucket, where.prefix, **dict(where.options))
