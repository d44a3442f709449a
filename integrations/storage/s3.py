"""Media in an S3 bucket, or anything speaking S3 (MinIO, R2, …), through boto3.

`MEDIA_STORAGE_URL=s3://bucket/prefix?endpoint_url=https://…&region=eu-west-1` (both
optional; `addressing_style=path|virtual` too). Credentials come from boto3's usual places
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role, …), never from
Baton's settings. Links are presigned GETs that make S3 answer with the Content-Type and
Content-Disposition Baton chose, whatever the object was stored with.
"""
from __future__ import annotations

import tempfile
import threading
from typing import BinaryIO

from .base import ObjectMissing, StorageUnavailable, check_key, content_disposition, copy_verified

MISSING = {"404", "NoSuchKey", "NotFound"}
SPOOL_BYTES = 8 * 1024 * 1024


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, addressing_style: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.addressing_style = addressing_style or ("path" if endpoint_url else "auto")
        self._client = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    @property
    def client(self):
        """One boto3 client, made on first use (boto3 clients are thread-safe, and this
        runs after gunicorn or RQ forked, never before)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(signature_version="s3v4", connect_timeout=5, read_timeout=60,
                                    retries={"max_attempts": 3, "mode": "standard"},
                                    s3={"addressing_style": self.addressing_style})
                    self._client = boto3.session.Session().client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)
        return self._client

    def object_name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str | None, call, **params):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if key is not None and str(error.get("Code")) in MISSING:
                raise ObjectMissing(key) from None
            raise StorageUnavailable(f"S3 {what} failed: {error.get('Code')} {error.get('Message', '')}".strip()) \
                from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 {what} failed: {exc}") from exc

    def put(self, key: str, data: bytes | BinaryIO, content_type: str) -> None:
        name = self.object_name(key)
        if self.exists(key):
            return                          # same key, same bytes: already there
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            copy_verified(key, data, spool)     # checked before a byte leaves
            spool.seek(0)
            self._call("upload", None, self.client.upload_fileobj, Fileobj=spool, Bucket=self.bucket, Key=name,
                       ExtraArgs={"ContentType": content_type or "application/octet-stream"})

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def open(self, key: str) -> BinaryIO:
        answer = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self.object_name(key))
        return answer["Body"]

    def size(self, key: str) -> int:
        answer = self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=self.object_name(key))
        return int(answer["ContentLength"])

    def signed_url(self, key: str, *, ttl: int, content_type: str, filename: str | None,
                   public_base: str = "") -> str:
        params = {"Bucket": self.bucket, "Key": self.object_name(key),
                  "ResponseContentType": content_type or "application/octet-stream",
                  "ResponseContentDisposition": content_disposition(content_type, filename)}
        return self._call("presign", None, self.client.generate_presigned_url, ClientMethod="get_object",
                          Params=params, ExpiresIn=int(ttl))

    def delete(self, key: str) -> None:
        self._call("delete", None, self.client.delete_object, Bucket=self.bucket, Key=self.object_name(key))

    def ping(self) -> None:
        self._call("head bucket", None, self.client.head_bucket, Bucket=self.bucket)


