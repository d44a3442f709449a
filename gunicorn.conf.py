"""gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (env-tunable)."""
import os

bind = os.environ.get("BATON_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gthread: a slow client (or a webhook burst) does not pin a whole process,
# and keep-alive connections from Meta are reused across requests.
worker_class = os.environ.get("BATON_WORKER_CLASS", "gthread")
threads = int(os.environ.get("BATON_THREADS", "4"))
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = os.environ.get("BATON_ACCESS_LOG") or None
