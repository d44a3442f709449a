"""Backoff shared by outbound sends and n8n deliveries."""
import random


def backoff_seconds(attempt: int, retry_after: float | None = None, base: float = 2.0, cap: float = 300.0,
                    rand=random.uniform) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After wins when longer."""
    delay = rand(base / 2, min(cap, base * (2 ** max(attempt - 1, 0))))
    if retry_after:
        delay = max(delay, float(retry_after))
    return delay
