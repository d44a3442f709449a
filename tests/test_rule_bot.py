"""The built-in rule bot, told as the customer's side of a chat: say hello, pick
from the menu, ask for a person, send a photo, leave a callback number."""
import pytest

from bot.rules import HANDOFF_KEYWORD, LANGUAGES, TEXTS, greeting_language, reply
from routing.escalation import is_explicit_request, load_phrases


def make_turn(text="hi", *, type="text", mode="normal", metadata=None, history=None):
    """A `bot.turn` event body as Baton sends it (only the fields the bot reads)."""
    return {
        "event": "bot.turn",
        "turn_id": "t_1",
        "mode": mode,
        "conversation": {"id": "c_1", "state": "BOT_CONTROLLED", "metadata": metadata or {}},
        "message": {"id": "m_1", "type": type, "text": text, "sender": "user"},
        "history": history or [],
        "reply_url": "http://127.0.0.1:8000/api/v1/bot/replies",
    }


@pytest.mark.parametrize(
    "text, language",
    [
        ("hi", "en"), ("Hello!", "en"), ("good morning", "en"),
        ("Hola", "es"), ("buenos días", "es"), ("Olá", "pt"), ("oi", "pt"), ("bom dia", "pt"),
        ("Bonjour", "fr"), ("salut !", "fr"), ("Hallo", "de"), ("Guten Tag", "de"),
        ("Ciao", "it"), ("buongiorno", "it"),
    ],
)
def test_greeting_gets_welcome_and_menu_in_the_customers_language(text, language):
    body = reply(make_turn(text))
    assert (body["intent"], body["language"], body["text"]) == (
        "greeting", language, f"{TEXTS[language]['greeting']}\n{TEXTS[language]['menu']}")


@pytest.mark.parametrize(
    "text, intent",
    [("1", "menu_hours"), ("2", "menu_order"), ("2.", "menu_order"), ("1️⃣", "menu_hours"),
     (" option 1 ", "menu_hours"), ("opción 2", "menu_order")],
)
def test_menu_number_gets_canned_answer(text, intent):
    body = reply(make_turn(text))
    assert (body["intent"], body["text"], "escalate" in body) == (intent, TEXTS["en"][intent], False)


@pytest.mark.parametrize(
    "text",
    ["3", "3)", "talk to a human", "Agent", "quiero hablar con un humano", "menu talk to a human"],
)
def test_asking_for_a_person_escalates(text):
    body = reply(make_turn(text))
    assert (body["intent"], body["escalate"], body["reason"]) == ("handoff", True, "bot")


def test_handoff_says_connecting_in_the_customers_language():
    body = reply(make_turn("3", metadata={"preferred_language": "pt"}))
    assert (body["text"], body["language"]) == (TEXTS["pt"]["handoff"], "pt")


def test_custom_phrases_replace_the_bundled_list():
    assert reply(make_turn("jefe"), phrases=("=jefe",))["intent"] == "handoff"


def test_custom_phrases_without_agent_leave_agent_to_fallback():
    assert reply(make_turn("agent"), phrases=("=jefe",))["intent"] == "fallback"


@pytest.mark.parametrize("text", ["what's the weather?", "12345", "👍", "4"])
def test_anything_else_gets_fallback_pointing_to_the_menu_and_agent(text):
    body = reply(make_turn(text))
    assert (body["intent"], body["text"], "escalate" in body) == (
        "fallback", TEXTS["en"]["fallback"].format(kw="agent"), False)


@pytest.mark.parametrize("message_type", ["image", "audio", "sticker", "location", "document"])
def test_non_text_message_gets_polite_text_only_answer(message_type):
    body = reply(make_turn(None, type=message_type))
    assert (body["intent"], body["text"]) == ("fallback", TEXTS["en"]["non_text"].format(kw="agent"))


def test_caption_on_an_image_is_not_read_as_text():
    assert reply(make_turn("hola", type="image"))["intent"] == "fallback"


def test_button_reply_title_is_read_as_text():
    assert reply(make_turn("Talk to a human", type="button"))["intent"] == "handoff"


def test_reply_quotes_conversation_and_turn_ids():
    body = reply(make_turn("hi"))
    assert (body["conversation_id"], body["turn_id"]) == ("c_1", "t_1")


def test_stored_preference_sets_language_without_a_greeting():
    body = reply(make_turn("1", metadata={"preferred_language": "fr"}))
    assert (body["text"], body["language"]) == (TEXTS["fr"]["menu_hours"], "fr")


def test_earlier_greeting_in_history_sets_language():
    history = [{"sender": "user", "text": "Ciao!"}, {"sender": "bot", "text": "Ciao! 👋"}]
    assert reply(make_turn("2", history=history))["language"] == "it"


def test_greeting_in_this_message_wins_over_stored_preference():
    assert reply(make_turn("Hola", metadata={"preferred_language": "de"}))["language"] == "es"


def test_unknown_language_replies_in_english_without_claiming_a_language():
    body = reply(make_turn("2"))
    assert (body["text"], "language" in body) == (TEXTS["en"]["menu_order"], False)


def test_unsupported_stored_language_is_ignored():
    assert "language" not in reply(make_turn("2", metadata={"preferred_language": "ja"}))


def test_menu_word_shows_the_menu():
    assert reply(make_turn("Menu"))["text"] == TEXTS["en"]["menu"]


def test_collect_callback_asks_for_number_and_time():
    body = reply(make_turn("agent", mode="collect_callback"))
    assert (body["intent"], body["text"], "escalate" in body) == (
        "callback_request", TEXTS["en"]["callback_request"], False)


def test_collect_callback_acknowledges_a_phone_number():
    body = reply(make_turn("call me on +34 600 123 456", mode="collect_callback"))
    assert (body["intent"], body["text"], body["metadata"]) == (
        "callback_details", "Thanks! We'll call you at +34 600 123 456.",
        {"callback": {"phone": "+34 600 123 456"}})


def test_collect_callback_acknowledges_phone_and_time():
    body = reply(make_turn("600-123-456 tomorrow 3pm", mode="collect_callback"))
    assert body["text"] == "Thanks! We'll call you at 600-123-456 (3pm)."


@pytest.mark.parametrize("text, when", [("after 15:00", "15:00"), ("vers 10h30", "10h30"),
                                        ("um 14 Uhr", "14 Uhr"), ("at 9 am", "9 am")])
def test_collect_callback_acknowledges_a_time_alone(text, when):
    body = reply(make_turn(text, mode="collect_callback"))
    assert (body["intent"], body["metadata"]) == ("callback_details", {"callback": {"when": when}})


def test_collect_callback_answers_in_the_customers_language():
    body = reply(make_turn("+55 11 91234 5678", mode="collect_callback",
                           metadata={"preferred_language": "pt"}))
    assert body["text"] == "Obrigado! Vamos ligar para +55 11 91234 5678."


def test_collect_callback_asks_again_for_a_photo():
    assert reply(make_turn(None, type="image", mode="collect_callback"))["intent"] == "callback_request"


def test_every_language_has_every_text():
    assert all(TEXTS[lang].keys() == TEXTS["en"].keys() for lang in LANGUAGES)


@pytest.mark.parametrize("language", LANGUAGES)
def test_advertised_handoff_word_is_an_escalation_phrase(language):
    assert is_explicit_request(HANDOFF_KEYWORD[language], load_phrases(None))


@pytest.mark.parametrize("language", LANGUAGES)
def test_texts_are_short_enough_for_one_glance(language):
    longest = max(len(t.format(kw="x", phone="+1 555 0100", when="15:00"))
                  for t in TEXTS[language].values())
    assert longest <= 160


def test_greeting_inside_a_sentence_does_not_reveal_language():
    assert greeting_language("I said hi to her") is None


def test_during_the_cooldown_after_a_release_the_bot_does_not_promise_a_person():
    turn = make_turn("agent")
    turn["conversation"]["cooldown_remaining"] = 2
    body = reply(turn)
    assert "escalate" not in body and body["intent"] == "handoff_cooldown"
    assert "ask again" in body["text"]
