"""Group commit (routing.group_commit): webhooks that arrive while a commit is in
flight share the next transaction, and each is still answered only once its own
rows are committed, with the answer it would get alone.

In process, a first piece of work holds the writer inside its transaction until
the webhooks under test have queued behind it: they then make one batch. The
process test kills gunicorn (every worker class) under load: no 200 without its row."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import routing.group_commit
import routing.ingest
from models import Message
from routing.group_commit import group_commit
from tests.support import text_webhook, wait_until


def _post(app, body):
    raw, headers = body
    answer = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    return answer.status_code, answer.get_json()


def _in_one_batch(app, bodies: list, commit_fails: bool = False) -> list[tuple[int, dict]]:
    """Post `bodies` at once while the writer is held in a transaction: they queue and
    are committed together in the next batch. Returns their answers, in order."""
    writer = group_commit()
    holding, release = threading.Event(), threading.Event()

    def hold():
        holding.set()
        release.wait(10)

    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        held = pool.submit(writer.run, hold)
        assert holding.wait(10)
        batches = writer.batches
        answers = [pool.submit(_post, app, body) for body in bodies]
        wait_until(lambda: len(writer._queue) == len(bodies), what="the webhooks to queue behind the commit")
        release.set()
        if commit_fails:
            with pytest.raises(RuntimeError):
                held.result(10)
        else:
            held.result(10)
        results = [answer.result(10) for answer in answers]
    if not commit_fails:
        assert writer.batches == batches + 2           # the held one, then all of these together
        assert writer.largest >= len(bodies)
    return results


def _stored(message_id: str) -> bool:
    return Message.select().where(Message.provider_message_id == message_id).exists()


def test_webhooks_that_arrive_during_a_commit_are_committed_together(app):
    bodies = [text_webhook(f"1555000{n:04d}", f"hello {n}", message_id=f"wamid.GC{n}") for n in range(6)]
    answers = _in_one_batch(app, bodies)
    assert answers == [(200, {"messages": 1, "statuses": 0, "duplicates": 0, "ignored": 0})] * 6
    assert all(_stored(f"wamid.GC{n}") for n in range(6))


def test_a_webhook_that_fails_in_a_batch_answers_as_alone_and_undoes_only_its_own_rows(app, monkeypatch):
    record_message = routing.ingest._record_message

    def fails_after_writing(provider, message, *args):
        record_message(provider, message, *args)       # its row is written, then it fails
        if message.text == "boom":
            raise RuntimeError("a bug in recording this webhook")
    monkeypatch.setattr(routing.ingest, "_record_message", fails_after_writing)
    alone = _post(app, text_webhook("15550009999", "boom", message_id="wamid.ALONE"))
    assert alone[0] == 500 and not _stored("wamid.ALONE")

    answers = _in_one_batch(app, [text_webhook("15550000001", "before", message_id="wamid.OK1"),
                                  text_webhook("15550000002", "boom", message_id="wamid.BOOM"),
                                  text_webhook("15550000003", "after", message_id="wamid.OK2")])
    ok = (200, {"messages": 1, "statuses": 0, "duplicates": 0, "ignored": 0})
    assert answers == [ok, alone, ok]
    assert _stored("wamid.OK1") and _stored("wamid.OK2") and not _stored("wamid.BOOM")
    # Its neighbours' conversations were not undone either: both are there, with their message.
    assert Message.select().where(Message.text.in_(["before", "after"])).count() == 2


def test_the_same_message_twice_in_one_batch_is_stored_once_and_answered_as_a_duplicate(app):
    body = text_webhook("15550000004", "twice", message_id="wamid.TWICE")
    other = text_webhook("15550000004", "again, new id", message_id="wamid.TWICE2")
    answers = _in_one_batch(app, [body, body, other])
    counts = sorted((a[1]["messages"], a[1]["duplicates"]) for a in answers)
    assert all(a[0] == 200 for a in answers)
    assert counts == [(0, 1), (1, 0), (1, 0)]
    assert Message.select().where(Message.provider_message_id == "wamid.TWICE").count() == 1
    assert _stored("wamid.TWICE2")


def test_a_batch_whose_commit_fails_answers_each_of_its_webhooks_as_alone(app, monkeypatch):
    """The commit is what makes rows durable: when it fails, no webhook of the batch is
    answered 200 (each gets the failure, as alone: here a 500), and none is stored."""
    real = routing.group_commit.write_transaction

    @contextmanager
    def commit_fails():
        with real():
            yield
            raise RuntimeError("the commit failed")         # the transaction is rolled back
    monkeypatch.setattr(routing.group_commit, "write_transaction", commit_fails)
    answers = _in_one_batch(app, [text_webhook(f"1555001{n:04d}", "x", message_id=f"wamid.CF{n}")
                                 for n in range(3)], commit_fails=True)
    assert [status for status, _ in answers] == [500, 500, 500]
    assert not any(_stored(f"wamid.CF{n}") for n in range(3))


@pytest.mark.processes
@pytest.mark.parametrize("worker_class", ["gevent", "gthread", "sync"])
def test_gunicorn_killed_under_load_leaves_no_200_without_its_row(start_baton, worker_class):
    """SIGKILL of gunicorn's master and workers while 8 clients post: every webhook
    answered 200 before the kill has its row (group commit answers only after its commit)."""
    # gunicorn turns sync into gthread when it has more than one thread (BATON_THREADS, 4 by default).
    # One web process: /metrics reports the figures of the process that answers it.
    procs = start_baton(web_workers=1, rq_workers=0, cron=False, BATON_WORKER_CLASS=worker_class,
                        BATON_THREADS=1 if worker_class == "sync" else 4)
    procs.wait_ready()
    answered: list[str] = []
    stop = threading.Event()

    def client(n: int):
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            message_id = f"wamid.KILL{n}x{i}"
            raw, headers = text_webhook(f"1555002{n:04d}", f"message {i}", message_id=message_id)
            try:
                answer = session.post(f"{procs.url}/webhooks/whatsapp", data=raw, headers=headers, timeout=10)
            except requests.RequestException:
                return                      # cut off by the kill
            if answer.status_code == 200 and not answer.json().get("spooled"):
                answered.append(message_id)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: len(answered) >= 200, timeout=30, what="200 webhooks answered")
    commits, committed = _commit_metrics(procs.url)
    if worker_class == "sync":
        assert committed == commits                       # one request at a time: one webhook a commit
    else:
        assert committed > commits > 0                    # 8 clients at once: they share commits
    procs.kill_web()
    stop.set()
    for t in threads:
        t.join(15)
    stored = {m.provider_message_id for m in Message.select(Message.provider_message_id)
              .where(Message.provider_message_id.startswith("wamid.KILL"))}
    assert answered and set(answered) <= stored


def _commit_metrics(url: str) -> tuple[float, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    values = dict(line.split(" ", 1) for line in text.splitlines()
                  if line.startswith(("baton_webhook_commits_total ", "baton_webhooks_committed_total ")))
    return float(values["baton_webhook_commits_total"]), float(values["baton_webhooks_committed_total"])
