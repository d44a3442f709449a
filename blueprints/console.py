"""The agents' web console: one HTML page that talks to the JSON API.

The page holds no data and needs no login of its own: it asks for an API
token, keeps it in sessionStorage and sends it as `Authorization: Bearer` on
every call. Its script and stylesheet are served by Flask's static route.
The console is not part of the API contract, so it is not in /openapi.json.
"""
from __future__ import annotations

import os

from flask import Blueprint, current_app, make_response, render_template

from integrations.storage import link_origins

bp = Blueprint("console", __name__, url_prefix="/console")

# Defence in depth for a page that shows untrusted customer text: no inline
# script or style, nothing loaded from anywhere but this origin, no framing.
# Pictures, audio and video may also come from the media store's signed links:
# Baton's own origin for the filesystem store, the bucket's for S3.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:{media}; "
                           "media-src 'self'{media}; connect-src 'self'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


def content_security_policy(settings) -> str:
    return CONTENT_SECURITY_POLICY.format(media="".join(f" {o}" for o in link_origins(settings.MEDIA_STORAGE_URL)))


@bp.get("/conversations/<conversation_id>")
@bp.get("/")
@bp.get("")           # innermost, so url_for("console.page") builds /console
def page(conversation_id: str | None = None):
    """The console; the script opens `conversation_id` (from the address) after sign-in."""
    response = make_response(render_template("console.html", asset_version=_asset_version()))
    response.headers["Content-Security-Policy"] = content_security_policy(current_app.extensions["baton"].settings)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _asset_version() -> str:
    """Changes whenever the script or stylesheet does, so browsers never run a stale pair."""
    stamps = []
    for name in ("console.js", "console.css"):
        try:
            stamps.append(int(os.path.getmtime(os.path.join(current_app.static_folder, name))))
        except OSError:
            stamps.append(0)
    return format(max(stamps), "x")
