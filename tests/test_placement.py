"""jobs/placement.py: a worker process already running a pump leaves the lanes'
queues to another live process that runs none, so the inbound and outbound pumps
do not share one GIL while a process idles."""
from __future__ import annotations

import time

import pytest

from jobs import placement


@pytest.fixture
def me(rt, monkeypatch):
    monkeypatch.setattr(placement, "process_id", lambda: "box:100")
    return rt


def other(rt, pumps: int, alive_for: float) -> None:
    rt.redis.hset(f"{rt.settings.REDIS_PREFIX}:pump-placement", "box:200", f"{pumps} {time.time() + alive_for}")


def names(queues) -> list[str]:
    return [queue.name.rsplit("-", 1)[-1] for queue in queues]


def every_queue(rt) -> list:
    return [rt.queues[name] for name in ("inbound", "outbound", "events")] + [
        queue for name, queue in rt.queues.items() if name not in placement.LANES]


def test_a_process_running_a_pump_leaves_the_lanes_to_an_idle_one(me):
    other(me, pumps=0, alive_for=3)
    queues = every_queue(me)
    assert placement.queues_to_listen(me, queues) is queues          # it runs no pump: takes anything
    with placement.running_pump(me):
        kept = placement.queues_to_listen(me, queues)
        assert kept and not {"inbound", "outbound", "events"} & set(names(kept))
    assert placement.queues_to_listen(me, queues) is queues


@pytest.mark.parametrize("pumps, alive_for", [(1, 3), (0, -1)], ids=["the other is busy too", "the other is gone"])
def test_it_takes_everything_when_no_live_process_is_idle(me, pumps, alive_for):
    other(me, pumps=pumps, alive_for=alive_for)
    queues = every_queue(me)
    with placement.running_pump(me):
        assert placement.queues_to_listen(me, queues) is queues


def test_a_process_alone_takes_everything(me):
    queues = every_queue(me)
    with placement.running_pump(me), placement.running_pump(me):
        assert placement.queues_to_listen(me, queues) is queues
    assert me.redis.hget(f"{me.settings.REDIS_PREFIX}:pump-placement", "box:100").split()[0] in (b"0", "0")


def test_redis_away_changes_nothing(me, monkeypatch):
    other(me, pumps=0, alive_for=3)

    def down(*args, **kwargs):
        raise ConnectionError("redis is away")
    monkeypatch.setattr(me.redis, "pipeline", down)
    queues = every_queue(me)
    with placement.running_pump(me):
        assert placement.queues_to_listen(me, queues) is queues


def test_a_pump_job_starting_in_a_busy_process_moves_on_a_few_times_at_most(me):
    """Its claim is kept and the job queued again (moves + 1); after MAX_MOVES it runs here."""
    from jobs.context import set_runtime
    from jobs.pump import pump

    set_runtime(me)
    other(me, pumps=0, alive_for=30)
    claim = me.lanes.schedule("events", "dl_nothing")         # a claimed slot (its job is this call)
    with placement.running_pump(me):                          # this process runs a pump already
        assert pump("events", claim.token) == 0
        [again] = me.queues["events"].jobs
        assert again.args == ("events", claim.token, 1)
        again.delete()
        pump("events", claim.token, placement.MAX_MOVES)       # moved enough: it runs here
        assert me.queues["events"].jobs == []
