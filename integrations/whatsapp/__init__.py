"""WhatsApp providers behind one adapter interface (see base.py)."""
from __future__ import annotations

from config import Settings, send_concurrency


def make_adapter(settings: Settings):
    """The adapter for `WHATSAPP_PROVIDER`."""
    if settings.WHATSAPP_PROVIDER == "wasender":
        from .wasender import WasenderAdapter

        return WasenderAdapter(webhook_secret=settings.WASENDER_WEBHOOK_SECRET,
                               api_key=settings.WASENDER_API_KEY, api_base=settings.WASENDER_API_BASE,
                               connections=send_concurrency(settings))
    if settings.WHATSAPP_PROVIDER == "cloud_api":
        from .cloud_api import CloudApiAdapter

        return CloudApiAdapter(app_secret=settings.WHATSAPP_APP_SECRET,
                               access_token=settings.WHATSAPP_ACCESS_TOKEN,
                               api_base=settings.WHATSAPP_API_BASE,
                               verify_token=settings.WHATSAPP_VERIFY_TOKEN,
                               connections=send_concurrency(settings))
    from .sandbox import SandboxAdapter

    return SandboxAdapter(app_secret=settings.WHATSAPP_APP_SECRET,
                          verify_token=settings.WHATSAPP_VERIFY_TOKEN)
