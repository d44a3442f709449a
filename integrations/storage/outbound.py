"""Stored files handed to a WhatsApp provider to send (`adapter.media_files`).

The Cloud API takes the bytes (`open`: the adapter uploads them); WASender takes
a public link (`link`): a signed storage URL, absolute (Baton's own store: under
PUBLIC_BASE_URL, which WASender must be able to reach; S3: a presigned URL) and
valid LINK_TTL seconds, long enough for a provider that fetches it a while later.
"""
from __future__ import annotations

from typing import Callable

from .base import Storage

LINK_TTL = 24 * 3600


class ProviderFiles:
    def __init__(self, store: Callable[[], Storage], public_base: str, link_ttl: int = LINK_TTL):
        self._store = store           # the runtime's store, built on first use
        self.public_base = public_base
        self.link_ttl = link_ttl

    def open(self, key: str):
        return self._store().open(key)

    def link(self, key: str, content_type: str, filename: str | None) -> str:
        return self._store().signed_url(key, ttl=self.link_ttl, content_type=content_type, filename=filename,
                                        public_base=self.public_base)
