"""What happens to an outbound message after a failed provider call: a pure
decision, tested as a table (tests/test_send_policy.py).

- The request never reached the provider (it could not connect): send again at
  once, then with backoff if it keeps failing.
- The outcome is unknown (the request went out and no answer came): never send
  again at once; wait up to SEND_RECONCILE_SECONDS for a status webhook naming
  the message (`biz_opaque_callback_data` on the Cloud API, the echo on
  WASender), then send again.
- 131056 (too many messages to this one customer): only that customer waits,
  at least PAIR_LIMIT_SECONDS.
- 131047 (more than 24 hours since the customer wrote): fails, saying what to
  do instead.
- 130429, 429 and 5xx (and the provider's other transient codes): retried with
  full-jitter backoff, honouring Retry-After.
- Everything else (131026, 131049, 131051, 131052, an unknown error body…):
  fails at once with the provider's code kept.
- A retry that would go past SEND_MAX_ATTEMPTS tries, or past SEND_MAX_AGE
  seconds since the message was queued, fails with its last error instead.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from integrations.whatsapp.base import NOT_SENT, UNKNOWN, SendError

from .backoff import backoff_seconds

PAIR_LIMIT = 131056
WINDOW_CLOSED = 131047
PAIR_LIMIT_SECONDS = 6.0
WINDOW_CLOSED_TITLE = ("Re-engagement message: more than 24 hours since the customer last wrote; "
                       "send a template")


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class Reconcile:
    """Outcome unknown: wait `delay` seconds for a status webhook before sending again."""
    delay: float


@dataclass(frozen=True)
class Fail:
    code: int | str | None
    title: str


Outcome = Retry | Reconcile | Fail


def after_send_error(error: SendError, attempt: int, age_seconds: float, *, max_attempts: int,
                     max_age: float, reconcile_seconds: float, rand=random.uniform) -> Outcome:
    """What to do with a message whose `attempt`-th send (1 = first) failed with
    `error`, `age_seconds` after it was queued."""
    code = error.code
    if error.stage == UNKNOWN:
        return Reconcile(reconcile_seconds)
    if code == WINDOW_CLOSED:
        return Fail(code, WINDOW_CLOSED_TITLE)
    if error.stage == NOT_SENT:
        delay = 0.0 if attempt == 1 else backoff_seconds(attempt - 1, rand=rand)
    elif code == PAIR_LIMIT:
        delay = max(error.retry_after or 0.0, PAIR_LIMIT_SECONDS) + rand(0, PAIR_LIMIT_SECONDS / 3)
    elif error.retryable:
        delay = backoff_seconds(attempt, error.retry_after, rand=rand)
    else:
        return Fail(code, error.title)
    if attempt >= max_attempts or age_seconds + delay > max_age:
        return Fail(code, error.title)
    return Retry(delay)
