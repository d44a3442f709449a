"""The approved WhatsApp templates agents may send: the TEMPLATES_FILE catalog, merged with the
WhatsApp Business Account's own APPROVED templates when the provider has such a list
(Cloud API with WHATSAPP_WABA_ID; fetched on demand, kept TEMPLATES_CACHE_SECONDS per process)."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, current_app

from integrations import templates

from .api import errors, reply, responds
from .auth import require
from .errors import ApiError
from .schemas import TemplateListSchema

bp = Blueprint("templates", __name__, url_prefix="/api/v1")

NO_TEMPLATES = {
    "wasender": "WASender has no WhatsApp message templates: there is no list to read, and it cannot send one.",
    "sandbox": "The sandbox provider has no WhatsApp Business Account: only TEMPLATES_FILE lists templates.",
}


@dataclass(frozen=True)
class Available:
    catalog: templates.Catalog | None     # None: no catalog at all, any template goes to the provider as given
    sources: tuple[str, ...]              # where the listed templates come from
    account_templates: str                # listed | unavailable | not_configured | unsupported
    note: str | None = None


def _account_list(rt) -> templates.AccountTemplates:
    cache = rt.caches.get("account_templates")
    if cache is None:
        waba_id = rt.settings.WHATSAPP_WABA_ID
        cache = rt.caches.setdefault("account_templates", templates.AccountTemplates(
            lambda: rt.adapter.fetch_templates(waba_id), rt.settings.TEMPLATES_CACHE_SECONDS))
    return cache


def available() -> Available:
    """The templates this process accepts now: the file's, then the account's (the file wins)."""
    rt = current_app.extensions["baton"]
    settings = rt.settings
    listed = templates.catalog_for(settings.TEMPLATES_FILE)
    sources = (templates.FILE,) if listed is not None else ()
    if settings.WHATSAPP_PROVIDER != "cloud_api":
        return Available(listed, sources, "unsupported", NO_TEMPLATES.get(settings.WHATSAPP_PROVIDER))
    if not settings.WHATSAPP_WABA_ID:
        return Available(listed, sources, "not_configured",
                         "Set WHATSAPP_WABA_ID to list the WhatsApp Business Account's approved templates too.")
    account = _account_list(rt)
    fetched = account.get()
    merged = templates.merge(listed, fetched)
    if fetched is not None:
        sources += (templates.ACCOUNT,)
    if account.problem is None:
        return Available(merged, sources, "listed")
    earlier = " (showing the list read earlier)" if fetched is not None else ""
    return Available(merged, sources, "unavailable",
                     f"The WhatsApp Business Account's templates could not be read{earlier}: {account.problem}")


def check_template(template: dict) -> None:
    """Refuse (422) a template no catalog lists, or whose components do not fit its declared
    parameters. Without any catalog, any template passes to the provider."""
    listed = available().catalog
    if listed is None:
        return
    where = {"name": template.get("name"), "language": template.get("language")}
    if listed.lookup(template) is None:
        raise ApiError(422, "unknown_template", "No approved template (in TEMPLATES_FILE or the WhatsApp Business "
                                                "Account) has this name and language.",
                       {**where, "known_languages": listed.languages_of(template.get("name"))})
    problems = templates.validate(listed, template)
    if not problems:
        return
    raise ApiError(422, "bad_template_components",
                   "The template's components do not fit the parameters it declares.",
                   {**where, "problems": problems})


@bp.get("/templates")
@responds(200, TemplateListSchema, "The templates agents may send (empty, `configured: false`, without any "
                                   "catalog)")
@errors(401)
@require("agent", "bot")
def list_templates():
    """The approved templates an agent may send (the only messages allowed outside the 24-hour window):
    TEMPLATES_FILE's, then the WhatsApp Business Account's APPROVED ones (Cloud API with WHATSAPP_WABA_ID)."""
    now = available()
    return reply({"configured": now.catalog is not None, "sources": list(now.sources),
                  "account_templates": now.account_templates, "note": now.note,
                  "items": [t.to_dict() for t in (now.catalog.templates if now.catalog else ())]})
