"""What a failed send leads to (routing/send_policy.py), as a table."""
import pytest

from integrations.whatsapp.base import NOT_SENT, REFUSED, UNKNOWN, SendError
from routing.send_policy import (PAIR_LIMIT_SECONDS, WINDOW_CLOSED_TITLE, Fail, Reconcile, Retry,
                                 after_send_error)

LIMITS = {"max_attempts": 6, "max_age": 3600, "reconcile_seconds": 30}


def refused(code, retryable, retry_after=None, title="refused"):
    return SendError(code, title, retryable=retryable, retry_after=retry_after, stage=REFUSED)


def outcome(error, attempt=1, age=0.0, **limits):
    return after_send_error(error, attempt, age, **{**LIMITS, **limits}, rand=lambda lo, hi: hi)


@pytest.mark.parametrize("error, attempt, expected", [
    # never reached the provider: again at once, then backing off
    (SendError("network", "refused", True, stage=NOT_SENT), 1, Retry(0.0)),
    # the request went out and no answer came: wait for a status naming it
    (SendError("network", "ReadTimeout", True, stage=UNKNOWN), 1, Reconcile(30)),
    (SendError("network", "ReadTimeout", True, stage=UNKNOWN), 6, Reconcile(30)),
    # only that customer waits, at least 6 s
    (refused(131056, True), 1, Retry(PAIR_LIMIT_SECONDS * 4 / 3)),
    (refused(131056, True, retry_after=20), 1, Retry(20 + PAIR_LIMIT_SECONDS / 3)),
    # throughput, 429 and 5xx: backoff with jitter, Retry-After honoured
    (refused(130429, True), 1, Retry(2.0)),
    (refused(130429, True), 3, Retry(8.0)),
    (refused(500, True, retry_after=45), 1, Retry(45.0)),
    # permanent: fail at once with the provider's code
    (refused(131026, False, title="Message undeliverable"), 1, Fail(131026, "Message undeliverable")),
    (refused(131049, False, title="ecosystem"), 1, Fail(131049, "ecosystem")),
    (refused(131051, False, title="unsupported"), 1, Fail(131051, "unsupported")),
    (refused(131052, False, title="media"), 1, Fail(131052, "media")),
    (refused("http_418", False, title="I'm a teapot"), 1, Fail("http_418", "I'm a teapot")),
    # the window closed: fails, saying what to do
    (refused(131047, False), 1, Fail(131047, WINDOW_CLOSED_TITLE)),
    # out of attempts: the last error
    (refused(130429, True, title="(#130429) Rate limit hit"), 6, Fail(130429, "(#130429) Rate limit hit")),
    (SendError("network", "refused", True, stage=NOT_SENT), 6, Fail("network", "refused")),
])
def test_after_a_failed_send(error, attempt, expected):
    assert outcome(error, attempt) == expected


def test_a_retry_that_would_land_past_the_maximum_age_fails_instead():
    assert outcome(refused(130429, True, retry_after=60), age=3500) == Retry(60.0)
    assert outcome(refused(130429, True, retry_after=120), age=3500) == Fail(130429, "refused")


def test_not_sent_twice_in_a_row_backs_off():
    assert outcome(SendError("network", "refused", True, stage=NOT_SENT), attempt=2) == Retry(2.0)
