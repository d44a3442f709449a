"""The approved WhatsApp templates agents may send (the TEMPLATES_FILE catalog)."""
from __future__ import annotations

from flask import Blueprint, current_app

from integrations import templates

from .api import errors, reply, responds
from .auth import require
from .errors import ApiError
from .schemas import TemplateListSchema

bp = Blueprint("templates", __name__, url_prefix="/api/v1")


def catalog() -> templates.Catalog | None:
    """This process's catalog (read and checked at start-up), or None without TEMPLATES_FILE."""
    return templates.catalog_for(current_app.extensions["baton"].settings.TEMPLATES_FILE)


def check_template(template: dict) -> None:
    """Refuse (422) a template the catalog does not list, or whose components do not fit
    its declared parameters. Without a catalog, any template passes to the provider."""
    listed = catalog()
    if listed is None:
        return
    where = {"name": template.get("name"), "language": template.get("language")}
    if listed.lookup(template) is None:
        raise ApiError(422, "unknown_template", "No approved template in TEMPLATES_FILE has this name and language.",
                       {**where, "known_languages": listed.languages_of(template.get("name"))})
    problems = templates.validate(listed, template)
    if not problems:
        return
    raise ApiError(422, "bad_template_components",
                   "The template's components do not fit the parameters it declares.",
                   {**where, "problems": problems})


@bp.get("/templates")
@responds(200, TemplateListSchema, "The catalog (empty, `configured: false`, without TEMPLATES_FILE)")
@errors(401)
@require("agent", "bot")
def list_templates():
    """The approved templates an agent may send (the only messages allowed outside the 24-hour window)."""
    listed = catalog()
    return reply({"configured": listed is not None,
                  "items": [t.to_dict() for t in (listed.templates if listed else ())]})
