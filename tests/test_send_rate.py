"""The number's send rate (routing/send_rate.py) against a real Redis, on a clock the test
moves: a sender that sends whenever it is let never has more than WHATSAPP_MPS sends in a
second plus the jitter margin, never more than a tenth of them in a tenth of it, and still
reaches the rate less the margin."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from redis import Redis

from routing import send_rate
from routing.send_rate import JITTER_MARGIN, SendRate


@pytest.fixture
def clock(monkeypatch):
    now = [1_800_000_000.0]
    monkeypatch.setattr(send_rate, "time", SimpleNamespace(time=lambda: now[0]))
    return now


def greedy_sender(rate: SendRate, clock, seconds: float, number: str = "sandbox-1") -> list[float]:
    """Send whenever a place is free, for `seconds`; the times the sends went."""
    sent, end = [], clock[0] + seconds
    while clock[0] < end:
        wait = rate.acquire(number)
        if wait:
            clock[0] += wait
        else:
            sent.append(clock[0])
    return sent


def most_in_any_window(times: list[float], width: float) -> int:
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - width:
            j += 1
        most = max(most, i - j + 1)
    return most


@pytest.mark.parametrize("mps", [80, 20, 1000])
def test_a_greedy_sender_keeps_under_the_rate_with_room_for_jitter_and_without_bursts(redis_server, clock, mps):
    rate = SendRate(Redis.from_url(redis_server.url), f"t{uuid.uuid4().hex[:8]}", mps)
    sent = greedy_sender(rate, clock, 5.0)
    window = 1.0 + JITTER_MARGIN
    assert most_in_any_window(sent, window) == mps
    assert most_in_any_window(sent, window / 10) <= -(-mps // 10)
    later = [t for t in sent if t >= sent[0] + window]      # after the first window's burst
    achieved = len(later) / (clock[0] - sent[0] - window)
    assert mps / window * 0.98 <= achieved <= mps / window * 1.01, achieved


def test_each_number_has_its_own_window(redis_server, clock):
    rate = SendRate(Redis.from_url(redis_server.url), f"t{uuid.uuid4().hex[:8]}", 20)
    assert [rate.acquire("a") for _ in range(2)] == [0.0, 0.0]
    assert rate.acquire("a") > 0
    assert rate.acquire("b") == 0.0


@pytest.mark.parametrize("mps", [80, 1000])
def test_places_taken_many_at_once_are_the_places_taken_one_by_one(redis_server, clock, mps):
    """acquire_many(n) (the pump asks for everyone in line in one round trip) grants what n
    calls to acquire() at that instant would, and tells the same wait for the next place."""
    redis = Redis.from_url(redis_server.url)
    one, many = (SendRate(redis, f"t{uuid.uuid4().hex[:8]}", mps) for _ in range(2))
    refused = 0
    for _ in range(60):
        wanted = mps // 7
        singles = [one.acquire("n") for _ in range(wanted)]
        granted = singles.index(next(w for w in singles if w)) if any(singles) else wanted
        assert many.acquire_many("n", wanted) == (granted, next((w for w in singles if w), 0.0))
        refused += wanted - granted
        clock[0] += 0.05
    assert refused, "the window was never full: the test compared nothing but grants"
