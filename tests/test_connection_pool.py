"""Under gunicorn's gevent worker every request is its own greenlet; PostgreSQL
connections must still come from a bounded pool, whatever the burst."""
import threading

import psycopg2
import pytest
import requests

from models import ApiToken
from tests.support import bearer, using_postgres

pytestmark = [pytest.mark.processes,
              pytest.mark.skipif(not using_postgres(), reason="connection pooling is PostgreSQL's")]


def connections_to(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(database_url)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,))
            return cur.fetchone()[0]
    finally:
        admin.close()


def test_sixty_keep_alive_clients_share_a_pool_of_four_connections(start_baton, database_url):
    token = ApiToken.issue("root", "admin")[1]
    # Connections already open before Baton starts (this test process's pool, which
    # earlier tests in the session may have grown) are not the web worker's.
    before = connections_to(database_url)
    baton = start_baton(web_workers=1, rq_workers=0, cron=False, DATABASE_POOL_SIZE="4", SENTIMENT_LANGUAGES="")
    start, peak, statuses = threading.Barrier(60), [0], []
    lock = threading.Lock()

    def client():
        session = requests.Session()          # keep-alive: one greenlet per client on the server
        start.wait()
        for _ in range(5):
            answer = session.get(f"{baton.url}/api/v1/conversations",
                                 headers=bearer(token), timeout=30)
            with lock:
                statuses.append(answer.status_code)
                peak[0] = max(peak[0], connections_to(database_url))
        session.close()

    threads = [threading.Thread(target=client) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 300, baton.logs()
    # The web worker holds at most its pool of 4 (one more of this process's may open meanwhile).
    assert peak[0] - before <= 5, f"{peak[0]} connections to the database, {before} of them before Baton started"
