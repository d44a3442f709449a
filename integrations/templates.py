"""The catalog of approved WhatsApp message templates an agent may send (`TEMPLATES_FILE`).

The file is JSON, `{"templates": [...]}`; each entry names one approved template in
one language and declares the parameters each of its components takes:

    {"name": "order_update", "language": "en_US", "category": "UTILITY",
     "text": "Hi {{1}}, your order {{2}} has shipped.",        (optional, shown to agents)
     "body_parameters": 2,                                      (default 0)
     "header": {"format": "text", "parameters": 1},             (optional; or image, video, document)
     "buttons": [{"type": "quick_reply", "parameters": 1},      (optional, in the template's order)
                 {"type": "url", "parameters": 1}]}

`load(path)` reads and checks the file (raising `CatalogError` that says what is wrong);
`validate(catalog, template)` checks one `{name, language, components}` request, with
components as the Cloud API takes them, against the catalog and returns its problems
(an empty list when it fits). Both are pure: no Flask, no database.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

CATEGORIES = ("MARKETING", "UTILITY", "AUTHENTICATION")
HEADER_FORMATS = ("text", "image", "video", "document")
MEDIA_FORMATS = ("image", "video", "document")
# A button's type and the parameter type its one dynamic part takes (None: the button takes none).
BUTTON_PARAMETER = {"quick_reply": "payload", "url": "text", "copy_code": "coupon_code", "phone_number": None}
# Body and text-header parameter types, and the key that carries each one's value.
TEXT_PARAMETER_VALUE = {"text": "text", "currency": "currency", "date_time": "date_time"}
# Where a catalog entry comes from: the TEMPLATES_FILE, or the WhatsApp Business Account's own list.
FILE, ACCOUNT = "file", "whatsapp_business_account"
log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The template file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Header:
    format: str           # text | image | video | document
    parameters: int       # a text header: 0 or 1; a media header always takes exactly 1


@dataclass(frozen=True)
class Button:
    type: str             # quick_reply | url | copy_code | phone_number
    parameters: int       # 0 or 1


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    category: str
    body_parameters: int = 0
    header: Header | None = None
    buttons: tuple[Button, ...] = ()
    text: str | None = None
    source: str = FILE
    # A template of the account's list written with named placeholders (`{{first_name}}`): the names
    # each parameter of its text header and its body must carry as `parameter_name`, in order.
    header_names: tuple[str, ...] = ()
    body_names: tuple[str, ...] = ()

    @property
    def parameters(self) -> int:
        """How many parameters a message of this template fills, all components together."""
        return (self.body_parameters + (self.header.parameters if self.header else 0)
                + sum(b.parameters for b in self.buttons))

    def message(self) -> dict:
        """This template as an outbound message's `template` ({name, language, components}), with no
        parameters (only for a template that takes none)."""
        return {"name": self.name, "language": self.language, "components": []}

    def to_dict(self) -> dict:
        return {"name": self.name, "language": self.language, "category": self.category, "text": self.text,
                "source": self.source,
                "parameter_names": {"header": list(self.header_names), "body": list(self.body_names)}
                if self.header_names or self.body_names else None,
                "body_parameters": self.body_parameters,
                "header": None if self.header is None else {"format": self.header.format,
                                                            "parameters": self.header.parameters},
                "buttons": [{"index": i, "type": b.type, "parameters": b.parameters}
                            for i, b in enumerate(self.buttons)]}


@dataclass(frozen=True)
class Catalog:
    templates: tuple[Template, ...] = field(default=())

    def find(self, name: str, language: str) -> Template | None:
        return next((t for t in self.templates if t.name == name and t.language == language), None)

    def lookup(self, template: dict) -> Template | None:
        """The entry a `{name, language, components}` request names (language as `en_US` or `{"code": …}`)."""
        language = template.get("language")
        if isinstance(language, dict):
            language = language.get("code")
        return self.find(template.get("name"), language)

    def languages_of(self, name: str) -> list[str]:
        return sorted(t.language for t in self.templates if t.name == name)


# -- loading -----------------------------------------------------------------------------------

def _count(entry: dict, key: str, where: str, *, most: int) -> int:
    value = entry.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise CatalogError(f"{where}: {key} must be a whole number from 0 to {most}, got {value!r}")
    return value


def _only(entry: dict, allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _header(raw: Any, where: str) -> Header | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: header must be an object or null")
    _only(raw, {"format", "parameters"}, f"{where} header")
    fmt = str(raw.get("format", "")).lower()
    if fmt not in HEADER_FORMATS:
        raise CatalogError(f"{where}: header format must be one of {', '.join(HEADER_FORMATS)}, "
                           f"got {raw.get('format')!r}")
    if fmt in MEDIA_FORMATS:
        if raw.get("parameters", 1) != 1:
            raise CatalogError(f"{where}: a {fmt} header takes exactly 1 parameter (the media)")
        return Header(fmt, 1)
    return Header(fmt, _count(raw, "parameters", f"{where} header", most=1))


def _buttons(raw: Any, where: str) -> tuple[Button, ...]:
    if not isinstance(raw, list) or len(raw) > 10:
        raise CatalogError(f"{where}: buttons must be a list of at most 10")
    buttons = []
    for i, entry in enumerate(raw):
        here = f"{where} button {i}"
        if not isinstance(entry, dict):
            raise CatalogError(f"{here}: must be an object")
        _only(entry, {"type", "parameters", "text"}, here)
        kind = str(entry.get("type", "")).lower()
        if kind not in BUTTON_PARAMETER:
            raise CatalogError(f"{here}: type must be one of {', '.join(BUTTON_PARAMETER)}, got {entry.get('type')!r}")
        count = _count(entry, "parameters", here, most=0 if BUTTON_PARAMETER[kind] is None else 1)
        buttons.append(Button(kind, count))
    return tuple(buttons)


def parse(document: Any) -> Catalog:
    """A catalog from the decoded JSON document (raises CatalogError)."""
    if not isinstance(document, dict) or not isinstance(document.get("templates"), list):
        raise CatalogError('the file must be a JSON object with a "templates" list')
    templates: list[Template] = []
    for i, entry in enumerate(document["templates"]):
        where = f"templates[{i}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: must be an object")
        _only(entry, {"name", "language", "category", "text", "body_parameters", "header", "buttons"}, where)
        name, language = entry.get("name"), entry.get("language")
        if not isinstance(name, str) or not name.strip() or len(name) > 512:
            raise CatalogError(f"{where}: name must be a non-empty string")
        if not isinstance(language, str) or not 2 <= len(language) <= 16:
            raise CatalogError(f"{where} ({name}): language must be a language code such as en_US")
        category = str(entry.get("category", "")).upper()
        if category not in CATEGORIES:
            raise CatalogError(f"{where} ({name}): category must be one of {', '.join(CATEGORIES)}, "
                               f"got {entry.get('category')!r}")
        text = entry.get("text")
        if text is not None and not isinstance(text, str):
            raise CatalogError(f"{where} ({name}): text must be a string")
        template = Template(name=name, language=language, category=category, text=text,
                            body_parameters=_count(entry, "body_parameters", f"{where} ({name})", most=100),
                            header=_header(entry.get("header"), f"{where} ({name})"),
                            buttons=_buttons(entry.get("buttons", []), f"{where} ({name})"))
        if any(t.name == name and t.language == language for t in templates):
            raise CatalogError(f"{where}: {name} in {language} is listed twice")
        templates.append(template)
    return Catalog(tuple(templates))


def load(path: str | Path) -> Catalog:
    """Read and check the catalog file (raises CatalogError)."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(f"{str(path)!r} is not valid JSON: {exc}") from None
    return parse(document)


@lru_cache(maxsize=8)
def _cached(path: str) -> Catalog:
    return load(path)


def catalog_for(path: str) -> Catalog | None:
    """The catalog TEMPLATES_FILE names, read once per process (None when the setting is empty)."""
    return _cached(path) if path else None


def merge(first: Catalog | None, second: Catalog | None) -> Catalog | None:
    """One catalog of both (None when neither exists); on a name and language both list, `first` wins."""
    if first is None or second is None:
        return first if second is None else second
    taken = {(t.name, t.language) for t in first.templates}
    return Catalog(first.templates + tuple(t for t in second.templates if (t.name, t.language) not in taken))


# -- Baton's own notices sent as templates (HANDOFF_NOTICE_TEMPLATE, …) ---------------------------

# Each notice Baton sends on its own (a setting holding its text) and the setting naming its template.
NOTICE_SETTINGS = {notice: f"{notice}_TEMPLATE"
                   for notice in ("HANDOFF_NOTICE", "PENDING_NOTICE", "CALLBACK_NOTICE", "TIMEOUT_CLOSE_NOTICE",
                                  "BOT_FALLBACK_NOTICE")}


def notice_template(catalog: Catalog | None, value: str) -> Template:
    """The catalog entry a `*_NOTICE_TEMPLATE` setting names: `name`, or `name:language` when the
    catalog lists the name in several languages. A notice is sent as it is, so the template must
    take no parameters. Raises CatalogError saying what is wrong."""
    name, _, language = value.strip().partition(":")
    if catalog is None:
        raise CatalogError(f"names the template {name!r}, but TEMPLATES_FILE is empty: list it there "
                           "(a notice template must be known at start-up)")
    known = catalog.languages_of(name)
    if not known:
        raise CatalogError(f"TEMPLATES_FILE lists no template {name!r}")
    if not language and len(known) > 1:
        raise CatalogError(f"{name!r} is listed in {', '.join(known)}: name one, e.g. {name}:{known[0]}")
    entry = catalog.find(name, language or known[0])
    if entry is None:
        raise CatalogError(f"TEMPLATES_FILE lists {name!r} in {', '.join(known)}, not in {language!r}")
    if entry.parameters:
        raise CatalogError(f"{name!r} in {entry.language} takes {entry.parameters} parameter(s); a notice is "
                           "sent as it is, so its template must take none")
    return entry


# -- the WhatsApp Business Account's own list (Cloud API `GET /{waba_id}/message_templates`) -----

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
# Graph's button types and how a message fills them (sub_type, parameters); OTP buttons are sent as `url`.
_GRAPH_BUTTONS = {"QUICK_REPLY": ("quick_reply", 0), "PHONE_NUMBER": ("phone_number", 0),
                  "COPY_CODE": ("copy_code", 1), "OTP": ("url", 1)}


class Unsupported(ValueError):
    """A Graph template whose components Baton cannot describe (a location header, a flow button, …)."""


def _placeholders(text: Any) -> int:
    return len(_names(text))


def _names(text: Any) -> tuple[str, ...]:
    """The distinct placeholders of `text`, in order of first appearance."""
    return tuple(dict.fromkeys(_PLACEHOLDER.findall(text))) if isinstance(text, str) else ()


def _graph_header(component: dict) -> Header:
    fmt = str(component.get("format", "TEXT")).lower()
    if fmt in MEDIA_FORMATS:
        return Header(fmt, 1)
    if fmt != "text":
        raise Unsupported(f"a {fmt} header")
    return Header("text", min(_placeholders(component.get("text")), 1))


def _graph_button(button: Any) -> Button:
    kind = str(button.get("type", "")).upper() if isinstance(button, dict) else ""
    if kind == "URL":
        return Button("url", 1 if _placeholders(button.get("url")) else 0)
    if kind not in _GRAPH_BUTTONS:
        raise Unsupported(f"a {kind or 'malformed'} button")
    return Button(*_GRAPH_BUTTONS[kind])


def from_graph(entry: Any) -> Template | None:
    """The catalog entry for one template of Graph's list; None unless it is APPROVED.
    Raises Unsupported for one whose components Baton cannot check."""
    if not isinstance(entry, dict) or entry.get("status") != "APPROVED":
        return None
    name, language = entry.get("name"), entry.get("language")
    category = str(entry.get("category", "")).upper()
    if not isinstance(name, str) or not name or not isinstance(language, str) or not language:
        raise Unsupported("no name or language")
    if category not in CATEGORIES:
        raise Unsupported(f"category {category!r}")
    header, buttons, body, text = None, (), 0, None
    named = str(entry.get("parameter_format", "")).upper() == "NAMED"
    header_names = body_names = ()
    for component in entry.get("components") or []:
        kind = str(component.get("type", "")).upper() if isinstance(component, dict) else ""
        if kind == "HEADER":
            header = _graph_header(component)
            header_names = _names(component.get("text"))[:1] if named and header.format == "text" else ()
        elif kind == "BODY":
            body_names = _names(component.get("text")) if named else ()
            text = component.get("text") if isinstance(component.get("text"), str) else None
            body = _placeholders(text)
        elif kind == "BUTTONS":
            buttons = tuple(_graph_button(b) for b in component.get("buttons") or [])
        elif kind != "FOOTER":
            raise Unsupported(f"a {kind or 'malformed'} component")
    return Template(name=name, language=language, category=category, body_parameters=body, header=header,
                    buttons=buttons, text=text, source=ACCOUNT, header_names=header_names, body_names=body_names)


def account_catalog(entries: list) -> Catalog:
    """The APPROVED templates of Graph's list that Baton can check (the others are logged and left out)."""
    templates: dict[tuple[str, str], Template] = {}
    for entry in entries:
        try:
            template = from_graph(entry)
        except Unsupported as exc:
            log.info("template %s (%s) of the WhatsApp Business Account is not offered: %s",
                     entry.get("name") if isinstance(entry, dict) else "?",
                     entry.get("language") if isinstance(entry, dict) else "?", exc)
            continue
        if template is not None:
            templates.setdefault((template.name, template.language), template)
    return Catalog(tuple(templates.values()))


class AccountTemplates:
    """The WhatsApp Business Account's approved templates, fetched on demand (`fetch()` returns
    Graph's entries, or raises) and kept `ttl` seconds in this process. A failed fetch keeps the
    last good list, if any, `problem` says what went wrong, and the next try waits RETRY_AFTER_FAILURE
    seconds (at most `ttl`), so an outage does not cost every request a call to Graph."""

    RETRY_AFTER_FAILURE = 30.0

    def __init__(self, fetch: Callable[[], list], ttl: float, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self.problem: str | None = None

    def get(self) -> Catalog | None:
        with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self.ttl:
                return self._catalog
            if self._failed_at is not None and now - self._failed_at < min(self.RETRY_AFTER_FAILURE, self.ttl):
                return self._catalog
            try:
                catalog = account_catalog(self._fetch())
            except Exception as exc:        # the provider is down or refuses: say so, keep what we had
                log.warning("cannot list the WhatsApp Business Account's templates: %s", exc)
                self.problem, self._failed_at = str(exc) or type(exc).__name__, now
                return self._catalog
            self._catalog, self._fetched_at, self._failed_at, self.problem = catalog, now, None, None
            return catalog


# -- checking a template message -------------------------------------------------------------------

def _value_problems(param: Any, where: str, kinds: dict[str, str | None]) -> list[str]:
    if not isinstance(param, dict):
        return [f"{where} must be an object"]
    kind = param.get("type")
    if kind not in kinds:
        return [f"{where} has type {kind!r}; expected {' or '.join(kinds)}"]
    key = kinds[kind]
    if key is not None and param.get(key) in (None, "", {}):
        return [f"{where} ({kind}) needs a `{key}` value"]
    return []


def _count_problem(what: str, expected: int, got: int) -> list[str]:
    return [] if expected == got else [f"{what} takes {expected} parameter(s), got {got}"]


def _parameters(component: dict, where: str) -> tuple[list, list[str]]:
    params = component.get("parameters", [])
    if not isinstance(params, list):
        return [], [f"{where}: parameters must be a list"]
    return params, []


def validate(catalog: Catalog, template: dict) -> list[str]:
    """What is wrong with sending `template` ({name, language, components}) given the catalog;
    empty when it names a listed template and its components fit the declared parameters
    (an unlisted one, `catalog.lookup(template) is None`, gives that one problem)."""
    entry = catalog.lookup(template)
    if entry is None:
        known = catalog.languages_of(template.get("name"))
        extra = f" (listed in: {', '.join(known)})" if known else ""
        return [f"unknown template {template.get('name')!r} in {template.get('language')!r}{extra}"]
    components = template.get("components") or []
    if not isinstance(components, list):
        return ["components must be a list"]
    problems: list[str] = []
    body = header = None
    buttons: dict[int, dict] = {}
    for i, component in enumerate(components):
        where = f"components[{i}]"
        if not isinstance(component, dict):
            problems.append(f"{where} must be an object")
            continue
        kind = str(component.get("type", "")).lower()
        if kind == "body":
            if body is not None:
                problems.append(f"{where}: a second body component")
            body = component
        elif kind == "header":
            if header is not None:
                problems.append(f"{where}: a second header component")
            header = component
        elif kind == "button":
            index = component.get("index")
            try:
                index = int(index)
            except (TypeError, ValueError):
                problems.append(f"{where}: a button component needs its `index` (0, 1, …)")
                continue
            if not 0 <= index < len(entry.buttons):
                problems.append(f"{where}: {entry.name} has no button {index} "
                                f"(it has {len(entry.buttons)} button(s))")
                continue
            if index in buttons:
                problems.append(f"{where}: button {index} given twice")
            buttons[index] = component
        else:
            problems.append(f"{where}: type must be header, body or button, got {component.get('type')!r}")

    params, bad = _parameters(body or {}, "body")
    problems += bad
    problems += _count_problem("the body", entry.body_parameters, len(params))
    for j, param in enumerate(params):
        problems += _value_problems(param, f"body parameter {j + 1}", TEXT_PARAMETER_VALUE)
    problems += _name_problems(params, entry.body_names, "body")

    if entry.header is None:
        if header is not None:
            problems.append(f"{entry.name} has no header")
    else:
        params, bad = _parameters(header or {}, "header")
        problems += bad
        problems += _count_problem(f"the {entry.header.format} header", entry.header.parameters, len(params))
        kinds = TEXT_PARAMETER_VALUE if entry.header.format == "text" else None
        for j, param in enumerate(params):
            if kinds is not None:
                problems += _value_problems(param, f"header parameter {j + 1}", kinds)
            else:
                problems += _media_problems(param, entry.header.format, f"header parameter {j + 1}")
        problems += _name_problems(params, entry.header_names, "header")

    for index, declared in enumerate(entry.buttons):
        component = buttons.get(index)
        if component is None:
            if declared.parameters:
                problems.append(f"button {index} ({declared.type}) takes {declared.parameters} parameter(s), got 0")
            continue
        sub_type = str(component.get("sub_type", "")).lower()
        if sub_type != declared.type:
            problems.append(f"button {index} is a {declared.type} button, not {component.get('sub_type')!r}")
            continue
        params, bad = _parameters(component, f"button {index}")
        problems += bad
        problems += _count_problem(f"button {index} ({declared.type})", declared.parameters, len(params))
        kind = BUTTON_PARAMETER[declared.type]
        for j, param in enumerate(params):
            problems += _value_problems(param, f"button {index} parameter {j + 1}", {kind: kind})
    return problems


def _name_problems(params: list, names: tuple[str, ...], where: str) -> list[str]:
    """A template with named placeholders takes each parameter with its `parameter_name`, each name once."""
    if not names:
        return []
    given = [p.get("parameter_name") if isinstance(p, dict) else None for p in params]
    if sorted(n for n in given if isinstance(n, str)) == sorted(names) and len(given) == len(names):
        return []
    return [f"the {where}'s parameters need `parameter_name` {', '.join(names)} (each once), "
            f"got {', '.join(str(n) for n in given) or 'none'}"]


def _media_problems(param: Any, fmt: str, where: str) -> list[str]:
    problems = _value_problems(param, where, {fmt: fmt})
    if problems:
        return problems
    media = param[fmt]
    if not isinstance(media, dict) or not (media.get("id") or media.get("link")):
        return [f"{where} ({fmt}) needs an `id` or a `link`"]
    return []
