"""gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (env-tunable)."""
import os

bind = os.environ.get("BATON_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gevent: an open live-event stream (GET /api/v1/events) is a parked greenlet,
# not a pinned thread, so hundreds of consoles do not starve webhooks and API
# calls; a slow client does not pin a process either. The worker monkey-patches
# before it loads the app. BATON_WORKER_CLASS=gthread still works (one thread
# per open stream, BATON_THREADS of them).
worker_class = os.environ.get("BATON_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("BATON_WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("BATON_THREADS", "4"))
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = os.environ.get("BATON_ACCESS_LOG") or None
# gunicorn's default format logs the request line with its query string, which can
# carry a secret: Meta's handshake sends WHATSAPP_VERIFY_TOKEN as `hub.verify_token`,
# and media links carry their signature. Log the path only (%(U)s), never the query.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)s'


def pre_request(worker, req):
    worker.log.debug("%s %s", req.method, req.path)
    # A live-event stream is the only use its client makes of the connection:
    # once the stream ends (shutdown, lost events) the client reconnects anyway,
    # and an idle keep-alive connection would hold a stopping worker open.
    if req.path == "/api/v1/events":
        req.force_close()


def post_worker_init(worker):
    """Make PostgreSQL calls yield under gevent, and end live streams on shutdown."""
    try:
        from gevent import monkey
    except ImportError:
        monkey = None
    if monkey is not None and monkey.is_module_patched("socket"):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()

    from routing.live_hub import end_streams_when

    # Streams never end on their own; without this a graceful stop waits out graceful_timeout.
    end_streams_when(lambda: not worker.alive)
