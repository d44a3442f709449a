"""One `flask baton worker` process runs WORKER_THREADS RQ workers as threads
(jobs/worker.py): a pump lingering on one lane never makes another lane wait,
and SIGTERM stops every thread cleanly. Real processes, like test_processes.py."""
from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.harness import post_all, state_summary
from tests.support import conversation_of, outbox_texts, text_webhook

pytestmark = pytest.mark.processes

LINGER = 20.0          # far longer than any bound below: a lane made to wait for it fails the test
PROMPTLY = 8.0


def pumps(rt, lane: str) -> int:
    return rt.redis.zcard(f"{rt.settings.REDIS_PREFIX}:lane:{lane}:pumps")


def registered_workers(rt) -> list:
    from rq import Worker

    return Worker.all(connection=rt.redis, queue=rt.queues["inbound"])


def test_with_one_worker_process_a_lingering_inbound_pump_holds_up_neither_sends_nor_events(start_baton, rt, n8n):
    from config import worker_threads
    from models import PENDING_AGENT

    procs = start_baton(rq_workers=1, PUMP_LINGER=str(LINGER), PUMP_LEASE="60",
                        N8N_NOTIFY_URL=n8n.url_for("notify"))
    procs.wait_until(lambda: len(registered_workers(rt)) == worker_threads(rt.settings), timeout=15,
                     what="every worker thread to register", describe=lambda: f"{registered_workers(rt)}")
    assert len({w.name for w in registered_workers(rt)}) == worker_threads(rt.settings)

    # The inbound pump routes "hi" (the built-in bot answers in the same commit), then
    # lingers LINGER s on its lane: the answer leaves on the outbound lane meanwhile.
    posted = time.monotonic()
    assert post_all(procs.url, [text_webhook("15550000101", "hi")])[0].status_code == 200
    procs.wait_until(lambda: outbox_texts("15550000101"), timeout=PROMPTLY,
                     what="the bot's answer to be sent while the inbound pump lingers",
                     describe=lambda: f"state: {state_summary(rt)}")
    assert time.monotonic() - posted < LINGER
    assert pumps(rt, "inbound") == 1, "the inbound pump stopped lingering: the story did not happen"

    # The lingering inbound pump takes the next message at once; its handoff notice
    # (outbound lane) and its handoff.requested event (events lane) go out while the
    # inbound and outbound pumps both linger.
    assert post_all(procs.url, [text_webhook("15550000102", "I want to talk to a human")])[0].status_code == 200
    procs.wait_until(lambda: n8n.received("handoff.requested"), timeout=PROMPTLY,
                     what="the handoff.requested event to reach n8n while the pumps linger",
                     describe=lambda: f"state: {state_summary(rt)}")
    procs.wait_until(lambda: outbox_texts("15550000102") == [rt.settings.HANDOFF_NOTICE], timeout=PROMPTLY,
                     what="the handoff notice to be sent while the pumps linger",
                     describe=lambda: f"state: {state_summary(rt)}")
    assert conversation_of("15550000102").state == PENDING_AGENT
    assert pumps(rt, "inbound") == 1 and pumps(rt, "outbound") == 1, "a pump stopped lingering"

    # Ctrl+C under honcho (the terminal's SIGINT, then honcho's SIGTERM): one warm
    # shutdown. The lingering pumps hand their lanes back at once, every thread
    # deregisters, and the process exits by itself (not the harness's SIGKILL).
    worker = procs.workers[0]
    stopping = time.monotonic()
    worker.popen.send_signal(signal.SIGINT)
    worker.popen.send_signal(signal.SIGTERM)
    procs.stop_worker(0)
    took = time.monotonic() - stopping
    assert worker.popen.returncode == 0, f"exit {worker.popen.returncode}\n{procs.logs()}"
    assert took < PROMPTLY, f"a warm shutdown took {took:.1f} s\n{procs.logs()}"
    assert registered_workers(rt) == []
    assert [pumps(rt, lane) for lane in ("inbound", "outbound", "events")] == [0, 0, 0]
    log = worker.log_path.read_text()
    assert "warm shut down (SIGINT)" in log and "cold shut down" not in log, log


def test_a_worker_stopped_mid_drain_hands_its_lane_over_and_nothing_is_lost_or_doubled(start_baton, rt):
    """SIGTERM while the only worker drains a backlog: its pump hands the lane over
    (a pump job waits in the queue), the process exits by itself, and a fresh
    worker routes and answers every message exactly once."""
    from models import BotTurn, Message

    procs = start_baton(rq_workers=0, BOT_FAILURE_LIMIT="100000")
    total = 200
    answers = post_all(procs.url, [text_webhook(f"1555001{i:04d}", f"question {i}") for i in range(total)])
    assert [a.status_code for a in answers] == [200] * total
    procs.start_worker()

    def routed() -> int:
        return Message.select().where((Message.direction == "in") & Message.routed_to.is_null(False)).count()
    procs.wait_until(lambda: routed() >= 10, timeout=30, what="the worker to be mid-drain",
                     describe=lambda: f"state: {state_summary(rt)}")
    procs.workers[0].popen.send_signal(signal.SIGTERM)
    procs.workers[0].killed = True
    procs.workers[0].popen.wait(timeout=procs.STOP_TIMEOUT)
    assert procs.workers[0].popen.returncode == 0, procs.logs()
    at_stop = routed()
    print(f"stopped the worker after {at_stop}/{total} messages were routed")
    assert at_stop < total, "the worker finished before it was stopped; the story did not happen"

    procs.start_worker()
    procs.settle_quiet(rt)
    assert routed() == total
    per_message = Counter(t.message_id for t in BotTurn.select())
    assert len(per_message) == total and set(per_message.values()) == {1}, "a message routed twice or never"
    replies = list(Message.select().where((Message.direction == "out") & (Message.sender == "bot")))
    assert len(replies) == total and all(r.status == "sent" for r in replies)
    assert len(outbox_texts()) == total, "a reply sent twice or never"
