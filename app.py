"""create_app(config=None): settings → database → Redis/queues → blueprints → CLI."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask

from config import load_settings, validate_for_web


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app. `config` overrides settings (tests pass their own)."""
    from runtime import Runtime

    settings = load_settings(config)
    validate_for_web(settings)
    logging.basicConfig(level=settings.LOG_LEVEL,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(SECRET_KEY=settings.SECRET_KEY or None, TESTING=settings.TESTING,
                      MAX_CONTENT_LENGTH=settings.MAX_WEBHOOK_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False
    app.json.mimetype = "application/json; charset=utf-8"   # as CONTRACT.md's conventions say
    runtime = Runtime.build(settings)
    app.extensions["baton"] = runtime

    from models import db
    from models.base import is_pooled

    from flask import request

    from blueprints.ops import WITHOUT_DATABASE
    from blueprints.webhooks import CONNECTS_ITSELF

    no_upfront_connection = WITHOUT_DATABASE | CONNECTS_ITSELF

    @app.before_request
    def _connect():
        # One connection per thread, kept open across requests (peewee is
        # thread-local); reconnects itself after a database restart. Health,
        # readiness, metrics and the OpenAPI document answer without it; the
        # webhooks connect themselves (they answer without it too: fail open).
        if request.endpoint not in no_upfront_connection:
            db.connect(reuse_if_open=True)

    @app.teardown_request
    def _give_back(exc):
        # A pooled PostgreSQL connection goes back to the pool after each
        # request (under gevent every request is its own greenlet). SQLite
        # keeps its cheap per-thread connection open across requests.
        if is_pooled() and not db.is_closed():
            db.close()

    from blueprints import (admin, agents, bot, console, conversations, errors, events, handoff, media, media_files, ops,
                            templates, tokens, webhooks)

    errors.init_app(app)
    for blueprint in (webhooks.bp, bot.bp, conversations.bp, handoff.bp, agents.bp, events.bp, admin.bp, ops.bp,
                      console.bp, templates.bp, media_files.bp, media.bp, tokens.bp):
        app.register_blueprint(blueprint)

    import cli

    cli.init_app(app)
    return app
