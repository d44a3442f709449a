"""The rule bot: greeting, a three-item menu, and a way to a human.

It answers a `bot.turn` event (CONTRACT.md) with the body of a
`POST /api/v1/bot/replies`, so the app can treat it exactly like an n8n bot.
It is a pure function of the turn: no clock, no database, no network.
"""
from __future__ import annotations

import re
from functools import lru_cache

from routing.escalation import is_explicit_request, load_phrases, normalize

LANGUAGES = ("en", "es", "pt", "fr", "de", "it")
DEFAULT_LANGUAGE = "en"

# Message types whose `text` is something the customer chose or typed (a
# button or list title), so they are read like text.
TEXT_TYPES = ("text", "button", "interactive")

# Normalized greeting (one or two words) → the language it reveals.
GREETINGS = {
    "hi": "en", "hello": "en", "hey": "en", "hiya": "en", "good morning": "en",
    "good afternoon": "en", "good evening": "en",
    "hola": "es", "buenas": "es", "buenos dias": "es", "buenas tardes": "es",
    "buenas noches": "es",
    "ola": "pt", "oi": "pt", "bom dia": "pt", "boa tarde": "pt", "boa noite": "pt",
    "bonjour": "fr", "bonsoir": "fr", "salut": "fr", "coucou": "fr",
    "hallo": "de", "moin": "de", "servus": "de", "guten morgen": "de", "guten tag": "de",
    "guten abend": "de", "gruss gott": "de",
    "ciao": "it", "salve": "it", "buongiorno": "it", "buonasera": "it",
}
MENU_WORDS = {"menu", "start", "inicio", "menue", "accueil"}

# A menu choice typed alone: "2", "2.", "2️⃣", "option 2", "opción 2".
_CHOICE = re.compile(r"^(?:option|opcion|opcao|opzione|nummer|numero|no)? ?([123])$")
# A phone number: 7–15 digits, possibly with +, spaces, dots, dashes, brackets.
_PHONE = re.compile(r"\+?\d[\d\s().\-]{5,}\d")
# A time of day: "15:00", "3pm", "3 pm", "10h", "10h30", "14 Uhr".
_TIME = re.compile(r"\b\d{1,2}(?:[:h]\d{2}\b|(?:[:.]\d{2})?\s?(?:am|pm|h|uhr)\b)", re.IGNORECASE)

# The word each language's texts tell customers to type for a person; each is a
# whole-message phrase in the bundled escalation list (tests hold us to that).
HANDOFF_KEYWORD = {
    "en": "agent", "es": "agente", "pt": "atendente", "fr": "conseiller",
    "de": "Mitarbeiter", "it": "operatore",
}

TEXTS = {
    "en": {
        "greeting": "Hi! 👋 How can I help? Reply with a number:",
        "menu": "1. Opening hours\n2. Order status\n3. Talk to a human",
        "menu_hours": "We're open Monday to Friday, 9:00–18:00. Reply 3 to talk to a person.",
        "menu_order": "Track your order with the link in your confirmation email. "
                      "Need more help? Reply 3.",
        "handoff": "Connecting you to a person now. One moment, please 🙏",
        "cooldown": "A colleague has just helped you, so I'll try first. If you still need a person, ask again in a moment.",
        "fallback": "Sorry, I didn't get that. Reply 1, 2 or 3, or type '{kw}' to talk to a person.",
        "non_text": "Sorry, I can only read text. Type '{kw}' to talk to a person.",
        "callback_request": "Our team is busy right now. Send us a phone number and a good "
                            "time, and we'll call you back.",
        "callback_phone": "Thanks! We'll call you at {phone}.",
        "callback_time": "Thanks! We'll call you on this WhatsApp number around {when}.",
    },
    "es": {
        "greeting": "¡Hola! 👋 ¿En qué puedo ayudarte? Responde con un número:",
        "menu": "1. Horario de atención\n2. Estado de mi pedido\n3. Hablar con una persona",
        "menu_hours": "Abrimos de lunes a viernes, de 9:00 a 18:00. "
                      "Responde 3 para hablar con una persona.",
        "menu_order": "Sigue tu pedido con el enlace de tu correo de confirmación. "
                      "¿Necesitas más ayuda? Responde 3.",
        "handoff": "Te comunico con una persona ahora. Un momento, por favor 🙏",
        "cooldown": "Un compañero acaba de atenderte, así que lo intento yo primero. Si aún necesitas a una persona, pídelo de nuevo en un momento.",
        "fallback": "Perdona, no te entendí. Responde 1, 2 o 3, o escribe '{kw}' "
                    "para hablar con una persona.",
        "non_text": "Perdona, solo puedo leer texto. Escribe '{kw}' para hablar con una persona.",
        "callback_request": "Nuestro equipo está ocupado ahora. Envíanos un teléfono y una "
                            "hora, y te llamamos.",
        "callback_phone": "¡Gracias! Te llamaremos al {phone}.",
        "callback_time": "¡Gracias! Te llamaremos a este número de WhatsApp hacia las {when}.",
    },
    "pt": {
        "greeting": "Olá! 👋 Como posso ajudar? Responda com um número:",
        "menu": "1. Horário de atendimento\n2. Status do pedido\n3. Falar com um atendente",
        "menu_hours": "Atendemos de segunda a sexta, das 9:00 às 18:00. "
                      "Responda 3 para falar com um atendente.",
        "menu_order": "Acompanhe seu pedido pelo link do e-mail de confirmação. "
                      "Precisa de mais ajuda? Responda 3.",
        "handoff": "Estou transferindo você para um atendente. Aguarde um momento 🙏",
        "cooldown": "Um colega acabou de atender você, então vou tentar primeiro. Se ainda precisar de um atendente, peça de novo daqui a pouco.",
        "fallback": "Desculpe, não entendi. Responda 1, 2 ou 3, ou digite '{kw}' "
                    "para falar com uma pessoa.",
        "non_text": "Desculpe, só consigo ler texto. Digite '{kw}' para falar com uma pessoa.",
        "callback_request": "Nossa equipe está ocupada agora. Envie um telefone e um horário, "
                            "e ligamos para você.",
        "callback_phone": "Obrigado! Vamos ligar para {phone}.",
        "callback_time": "Obrigado! Vamos ligar para este número do WhatsApp por volta das {when}.",
    },
    "fr": {
        "greeting": "Bonjour ! 👋 Comment puis-je vous aider ? Répondez par un chiffre :",
        "menu": "1. Horaires d'ouverture\n2. Suivi de commande\n3. Parler à un conseiller",
        "menu_hours": "Nous sommes ouverts du lundi au vendredi, de 9 h à 18 h. "
                      "Répondez 3 pour parler à un conseiller.",
        "menu_order": "Suivez votre commande avec le lien de votre e-mail de confirmation. "
                      "Besoin d'aide ? Répondez 3.",
        "handoff": "Je vous mets en relation avec un conseiller. Un instant, s'il vous plaît 🙏",
        "cooldown": "Un collègue vient de vous aider, je vais donc essayer d'abord. Si vous avez encore besoin d'un conseiller, redemandez dans un instant.",
        "fallback": "Désolé, je n'ai pas compris. Répondez 1, 2 ou 3, ou tapez « {kw} » "
                    "pour parler à une personne.",
        "non_text": "Désolé, je ne lis que le texte. Tapez « {kw} » pour parler à une personne.",
        "callback_request": "Notre équipe est occupée. Envoyez-nous un numéro de téléphone et "
                            "un horaire, nous vous rappellerons.",
        "callback_phone": "Merci ! Nous vous rappellerons au {phone}.",
        "callback_time": "Merci ! Nous vous rappellerons sur ce numéro WhatsApp vers {when}.",
    },
    "de": {
        "greeting": "Hallo! 👋 Wie kann ich helfen? Antworten Sie mit einer Zahl:",
        "menu": "1. Öffnungszeiten\n2. Bestellstatus\n3. Mit einem Mitarbeiter sprechen",
        "menu_hours": "Wir sind Montag bis Freitag von 9:00 bis 18:00 Uhr da. "
                      "Antworten Sie 3 für einen Mitarbeiter.",
        "menu_order": "Verfolgen Sie Ihre Bestellung über den Link in der Bestätigungs-E-Mail. "
                      "Mehr Hilfe? Antworten Sie 3.",
        "handoff": "Ich verbinde Sie mit einem Mitarbeiter. Einen Moment bitte 🙏",
        "cooldown": "Ein Kollege hat Ihnen gerade geholfen, daher versuche ich es zuerst. Wenn Sie noch einen Mitarbeiter brauchen, fragen Sie gleich noch einmal.",
        "fallback": "Entschuldigung, das habe ich nicht verstanden. Antworten Sie 1, 2 oder 3 "
                    "oder schreiben Sie „{kw}“ für einen Menschen.",
        "non_text": "Entschuldigung, ich kann nur Text lesen. "
                    "Schreiben Sie „{kw}“ für einen Menschen.",
        "callback_request": "Unser Team ist gerade beschäftigt. Senden Sie uns eine "
                            "Telefonnummer und eine Uhrzeit, wir rufen zurück.",
        "callback_phone": "Danke! Wir rufen Sie unter {phone} zurück.",
        "callback_time": "Danke! Wir rufen Sie gegen {when} unter dieser WhatsApp-Nummer zurück.",
    },
    "it": {
        "greeting": "Ciao! 👋 Come posso aiutarti? Rispondi con un numero:",
        "menu": "1. Orari di apertura\n2. Stato dell'ordine\n3. Parlare con un operatore",
        "menu_hours": "Siamo aperti dal lunedì al venerdì, dalle 9:00 alle 18:00. "
                      "Rispondi 3 per parlare con un operatore.",
        "menu_order": "Segui il tuo ordine con il link nell'email di conferma. "
                      "Serve altro? Rispondi 3.",
        "handoff": "Ti metto in contatto con un operatore. Un attimo, per favore 🙏",
        "cooldown": "Un collega ti ha appena aiutato, quindi provo prima io. Se hai ancora bisogno di un operatore, chiedilo di nuovo tra poco.",
        "fallback": "Scusa, non ho capito. Rispondi 1, 2 o 3, oppure scrivi '{kw}' "
                    "per parlare con una persona.",
        "non_text": "Scusa, leggo solo testo. Scrivi '{kw}' per parlare con una persona.",
        "callback_request": "Il nostro team è occupato. Inviaci un numero di telefono e un "
                            "orario, ti richiameremo.",
        "callback_phone": "Grazie! Ti richiameremo al {phone}.",
        "callback_time": "Grazie! Ti richiameremo su questo numero WhatsApp verso le {when}.",
    },
}


@lru_cache(maxsize=1)
def _bundled_phrases() -> tuple[str, ...]:
    # Read once per process; the bundled file never changes while we run.
    return load_phrases(None)


def greeting_language(text: str | None) -> str | None:
    """The language a message's opening greeting reveals ("Hola!!" → "es"),
    or None when the message does not start with a known greeting."""
    words = normalize(text or "").split()
    for size in (2, 1):
        if len(words) >= size and " ".join(words[:size]) in GREETINGS:
            return GREETINGS[" ".join(words[:size])]
    return None


def _known_language(turn: dict, text: str | None) -> str | None:
    """This message's greeting, else the conversation's stored preference, else
    the latest greeting in the history; None when nothing tells."""
    spoken = greeting_language(text)
    if spoken:
        return spoken
    metadata = (turn.get("conversation") or {}).get("metadata") or {}
    if metadata.get("preferred_language") in LANGUAGES:
        return metadata["preferred_language"]
    for past in reversed(turn.get("history") or []):
        if past.get("sender") == "user":
            spoken = greeting_language(past.get("text"))
            if spoken:
                return spoken
    return None


def _callback_details(text: str) -> dict | None:
    """The phone number and/or time of day in `text`; None when there is neither."""
    details = {}
    for match in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 7 <= len(digits) <= 15:
            details["phone"] = match.group().strip()
            break
    time = _TIME.search(text)
    if time:
        details["when"] = time.group()
    return details or None


def _collect_callback(text: str | None, say) -> tuple[str, str, dict | None]:
    """Reply, intent and metadata while the bot gathers callback details."""
    details = _callback_details(text or "")
    if details is None:
        return say("callback_request"), "callback_request", None
    if "phone" in details:
        line = say("callback_phone", phone=details["phone"])
        if "when" in details:  # every callback_phone text ends with "."
            line = f"{line.rstrip('.')} ({details['when']})."
        return line, "callback_details", {"callback": details}
    return say("callback_time", when=details["when"]), "callback_details", {"callback": details}


def _normal_turn(text: str, phrases: tuple[str, ...], say) -> tuple[str, str, bool]:
    """Reply, intent and whether to escalate, for a readable message in normal mode."""
    normalized = normalize(text)
    choice = _CHOICE.match(normalized)
    option = choice.group(1) if choice else None
    if option == "3" or is_explicit_request(text, phrases):
        return say("handoff"), "handoff", True
    if option:
        intent = "menu_hours" if option == "1" else "menu_order"
        return say(intent), intent, False
    if greeting_language(text):
        return f"{say('greeting')}\n{say('menu')}", "greeting", False
    if normalized in MENU_WORDS:
        return say("menu"), "menu", False
    return say("fallback"), "fallback", False


def reply(turn: dict, phrases: tuple[str, ...] | None = None) -> dict:
    """Answer one `bot.turn` event with a `POST /api/v1/bot/replies` body.

    Always returns `conversation_id`, `turn_id`, `text` and `intent`; adds
    `escalate: True` with `reason: "bot"` when the customer picked "talk to a
    human" or asked for one (`phrases`, default: the bundled list); adds
    `language` when the greeting, the conversation or its history revealed it.
    In mode `collect_callback` it only gathers a phone number and time, adding
    them as `metadata.callback`.
    """
    message = turn.get("message") or {}
    text = message.get("text") if message.get("type", "text") in TEXT_TYPES else None
    language = _known_language(turn, text)
    lang = language or DEFAULT_LANGUAGE

    def say(key: str, **values) -> str:
        return TEXTS[lang][key].format(kw=HANDOFF_KEYWORD[lang], **values)

    body = {"conversation_id": (turn.get("conversation") or {}).get("id"),
            "turn_id": turn.get("turn_id")}
    escalate, metadata = False, None
    if turn.get("mode") == "collect_callback":
        line, intent, metadata = _collect_callback(text, say)
    elif not (text and text.strip()):
        line, intent = say("non_text"), "fallback"
    else:
        line, intent, escalate = _normal_turn(
            text, _bundled_phrases() if phrases is None else phrases, say)

    if escalate and (turn.get("conversation") or {}).get("cooldown_remaining", 0) > 0:
        # Just released by an agent: Baton refuses a bot escalation during the
        # cooldown (loop prevention), so don't promise a person now.
        line, intent, escalate = say("cooldown"), "handoff_cooldown", False
    body.update(text=line, intent=intent)
    if escalate:
        body.update(escalate=True, reason="bot")
    if language:
        body["language"] = language
    if metadata:
        body["metadata"] = metadata
    return body
