"""Customers ask for a human in many languages and spellings; ordinary messages
that merely mention people, agents or service must stay with the bot."""
import pytest

from routing.escalation import (
    DEFAULT_PHRASES_FILE,
    is_explicit_request,
    load_phrases,
    normalize,
)


@pytest.fixture(scope="module")
def phrases():
    return load_phrases(None)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Talk To A HUMAN", "talk to a human"),
        ("Parler à un conseiller !", "parler a un conseiller"),
        ("  hablar   con\tun\nhumano  ", "hablar con un humano"),
        ("Ich möchte mit einem Mitarbeiter sprechen.", "ich mochte mit einem mitarbeiter sprechen"),
        ("agent 🙏🙏", "agent"),
        ("quelqu'un", "quelqu un"),
        ("Straße", "strasse"),
        ("snake_case", "snake case"),
        ("¿¡…!?", ""),
        ("ﬁle", "file"),
    ],
)
def test_normalize_folds_case_accents_and_punctuation(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "message",
    [
        # English
        "I want to talk to a human",
        "can i SPEAK TO A PERSON please???",
        "Is this a real person?",
        "I want a real person",
        "human agent pls",
        "Connect me to an agent",
        "I'd like to speak with a representative.",
        "Can I talk to someone",
        "Please put me through to customer service",
        "I want to speak to your manager!!!",
        "Agent",
        "AGENT!!!",
        "agent 🙏",
        "human",
        "Operator.",
        "representative",
        "live agent",
        # Español
        "Hola!! quiero HABLAR con un humano por favor",
        "hablar con una persona",
        "Quiero hablar con un asesor",
        "¿Puedo hablar con alguien?",
        "agente humano",
        "necesito atención humana",
        "humano",
        "Agente por favor",
        "pasame con un agente",
        # Português
        "quero falar com um atendente",
        "Falar com atendente, por favor",
        "atendente humano",
        "preciso falar com uma pessoa",
        "quero falar com alguem",
        "Atendente",
        "atendimento humano por favor",
        # Français
        "Je veux parler à un conseiller",
        "je veux parler a un conseiller",
        "PARLER À UNE CONSEILLÈRE",
        "un humain s'il vous plaît",
        "je voudrais parler à quelqu'un",
        "une vraie personne svp",
        "Conseiller",
        "je veux contacter le service client",
        # Deutsch
        "Ich möchte mit einem Menschen sprechen",
        "ich mochte mit einem menschen sprechen",
        "Kann ich einen Mitarbeiter sprechen?",
        "Mitarbeiter",
        "bitte mit einem echten Menschen reden",
        "mit jemandem sprechen bitte",
        # Italiano
        "Vorrei parlare con un operatore",
        "posso parlare con un'operatrice?",
        "voglio parlare con una persona vera",
        "operatore",
        "parlare con un essere umano",
        # Nederlands
        "Ik wil met een medewerker spreken",
        "kan ik met een mens praten",
        "medewerker",
    ],
)
def test_customer_asking_for_a_human_is_recognised(phrases, message):
    assert is_explicit_request(message, phrases)


@pytest.mark.parametrize(
    "message",
    [
        "I love human rights",
        "my agent id is 5",
        "this is customer feedback about your service",
        "your customer service is great, thanks",
        "the agentic workflow stopped working",
        "we use reagent grade chemicals",
        "humanity will survive",
        "as a human I make mistakes too",
        "my travel agent booked this trip",
        "who is the operator of this website?",
        "operator precedence is confusing",
        "a person picked up the parcel",
        "This is a real person's account",
        "I spoke to a person at the store yesterday",
        "give it to a person at reception",
        "I'm not a robot",
        "what are your opening hours?",
        "thanks for the help!",
        "hello",
        "help",
        "Hola, quiero saber el estado de mi pedido",
        "soy humano, no un robot",
        "es la cuenta de una persona real",
        "hablé con alguien ayer",
        "la agenda de mañana",
        "o atendimento foi ótimo, obrigado",
        "pouvez-vous me conseiller un produit ?",
        "le service client est rapide",
        "ich bin auch nur ein Mensch",
        "mein Mitarbeiterausweis funktioniert nicht",
        "sono un essere umano anch'io",
        "de medewerker was erg vriendelijk",
        "1",
        "",
        "!!!",
    ],
)
def test_ordinary_message_is_not_a_request(phrases, message):
    assert not is_explicit_request(message, phrases)


def test_none_text_is_not_a_request(phrases):
    assert not is_explicit_request(None, phrases)


def test_empty_phrase_set_matches_nothing():
    assert not is_explicit_request("talk to a human", ())


def test_bundled_file_is_the_default():
    assert load_phrases(None) == load_phrases(str(DEFAULT_PHRASES_FILE))


def test_empty_path_means_the_bundled_file():
    assert load_phrases("") == load_phrases(None)


def test_bundled_phrases_are_already_normalized(phrases):
    assert all(p.lstrip("=") == normalize(p.lstrip("=")) for p in phrases)


def test_bundled_file_has_no_bare_word_that_fires_inside_sentences(phrases):
    too_short = {"help", "person", "service", "human", "agent", "support", "operator"}
    assert not too_short & set(phrases)


def test_custom_file_ignores_comments_and_blank_lines(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("# our customers say\n\nQuiero un Técnico\n  =Jefe!  \n", encoding="utf-8")
    assert load_phrases(str(path)) == ("quiero un tecnico", "=jefe")


def test_custom_phrase_matches_inside_a_sentence(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("quiero un técnico\n", encoding="utf-8")
    assert is_explicit_request("Hola, QUIERO UN TECNICO ya", load_phrases(str(path)))


def test_custom_whole_message_phrase_matches_alone(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("=jefe\n", encoding="utf-8")
    assert is_explicit_request("¡Jefe!", load_phrases(str(path)))


def test_custom_whole_message_phrase_ignored_inside_a_sentence(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("=jefe\n", encoding="utf-8")
    assert not is_explicit_request("mi jefe pagó la factura", load_phrases(str(path)))


def test_custom_file_replaces_the_bundled_list(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("quiero un técnico\n", encoding="utf-8")
    assert not is_explicit_request("talk to a human", load_phrases(str(path)))


def test_duplicate_phrases_are_loaded_once(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_text("Real Person\nreal person\nréal person!\n", encoding="utf-8")
    assert load_phrases(str(path)) == ("real person",)


def test_missing_file_raises(tmp_path):
    with pytest.raises(OSError):
        load_phrases(str(tmp_path / "nope.txt"))


def test_hand_built_phrase_tuple_is_normalized_before_matching():
    assert is_explicit_request("hablar con un humano", ("Hablar con un HUMANO!",))


def test_longer_phrase_sharing_a_prefix_still_matches():
    assert is_explicit_request("talk to a humanoid", ("to a human", "to a humanoid"))


def test_shorter_phrase_is_not_matched_inside_a_longer_word():
    assert not is_explicit_request("talk to a humanoid", ("to a human", "to a humanoid robot"))
