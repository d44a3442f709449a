"""An English customer who writes angrily is handed to a human; calm, happy or
one-word messages stay with the bot, and so does every message in a language
VADER cannot read, however angry it is."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from routing.sentiment import MAX_SCORED_CHARS, SentimentAnalyser

REPO = Path(__file__).resolve().parents[1]
FURIOUS = "This is the worst service ever, I am furious!!!"


@pytest.mark.parametrize(
    "story, text, hint, threshold, urgency",
    [
        ("an English customer is furious", FURIOUS, None, -0.6, 0.86),
        ("the same customer in a conversation known to be English", FURIOUS, "en", -0.6, 0.86),
        ("a British customer (en-GB) is fed up", "Absolutely dreadful, I am sick of waiting", "en-GB", -0.6, 0.76),
        ("an American customer (en_US, underscore) is fed up", "Absolutely dreadful, I am sick of waiting",
         "en_US", -0.6, 0.76),
        ("a customer types in capitals with exclamation marks", "This is the WORST service ever!!!", None, -0.6, 0.77),
        ("angry emoji follow angry words (langid guesses Pidgin; the words are English)",
         "I am so angry 😡😡😡", None, -0.6, 0.64),
        ("a customer writes in slang", "wtf is wrong with u", None, -0.6, 0.78),
        ("a three-word burst, judged by its words", "awful awful awful", None, -0.6, 0.84),
        ("an intensifier VADER knows counts as English", "extremely disappointed", None, -0.5, 0.53),
        ("a two-word complaint at a touchier threshold", "horrible service", None, -0.5, 0.54),
        ("the hint wins: a conversation known to be English, on words langid cannot place",
         "horrible servicio", "en", -0.5, 0.54),
        ("a mild complaint at a touchy threshold", "this sucks so much", None, -0.3, 0.36),
        ("a rant of 64 kB, scored on its opening", (FURIOUS + " ") * 1400, None, -0.6, 1.0),
    ],
)
def test_an_angry_english_customer_escalates(story, text, hint, threshold, urgency):
    assert SentimentAnalyser(threshold).urgency(text, hint) == urgency


def test_a_furious_customer_is_more_urgent_than_the_default_threshold():
    assert SentimentAnalyser(-0.6).urgency(FURIOUS) > 0.6


def test_capitals_and_exclamation_marks_raise_the_urgency():
    analyser = SentimentAnalyser(-0.3)
    assert (analyser.urgency("This is the WORST service ever!!!")
            > analyser.urgency("This is the worst service ever"))


@pytest.mark.parametrize(
    "story, text, hint",
    [
        # Calm, polite or happy English
        ("a customer says thanks", "ok thanks", None),
        ("a customer asks where the order is", "where is my order?", None),
        ("a customer loves the product", "I love it", None),
        ("a customer is happy with a smile", "Thanks, that fixed it 🙂", None),
        ("a customer asks for a human politely", "I want to talk to a human", None),
        ("a mild complaint below the default threshold", "this sucks", None),
        ("a short sigh", "hate this", None),
        # Angry, but in a language VADER cannot read
        ("a Spanish customer is furious", "esto es una mierda, quiero hablar con alguien", None),
        ("a Brazilian customer calls it absurd", "isso é um absurdo", None),
        ("a Portuguese customer complains at length", "o atendimento é horrível, quero falar com alguém", None),
        ("a French customer is furious", "C'est nul, je suis furieux", None),
        ("a German customer is furious", "Das ist scheiße, ich bin wütend", None),
        ("an Italian customer is disgusted", "questo servizio fa schifo, voglio parlare con qualcuno", None),
        ("a short Spanish 'it disgusts me'", "me da asco", None),
        ("a short Spanish 'I don't like it' (starts with the English 'no')", "no me gusta", None),
        ("an English adjective in a Spanish phrase", "horrible servicio", None),
        ("a Spanish conversation's customer is furious", "estoy harto, esto es una vergüenza", "es"),
        ("a Brazilian conversation's customer", "isso é um absurdo", "pt-BR"),
        # The hint wins over a text that reads English
        ("English words in a conversation known to be Spanish", FURIOUS, "es"),
        ("English words in a conversation known to be Brazilian", FURIOUS, "pt-BR"),
        # Nothing, or too little, to judge
        ("no text (a sticker)", None, None),
        ("an empty text", "", None),
        ("a blank text", "   \n", None),
        ("only angry emoji", "😡😡😡", None),
        ("only thumbs down", "👎👎 👎", None),
        ("only a cursing emoji in an English conversation", "🤬", "en"),
        ("one angry word", "Terrible!!!", None),
        ("one angry word in an English conversation", "TERRIBLE!!!", "en"),
        ("a long polite message", "Hello, I ordered a blue jacket last week and would like to know "
         "when it will arrive. " * 60, None),
    ],
)
def test_message_stays_with_the_bot(story, text, hint):
    assert SentimentAnalyser(-0.6).urgency(text, hint) is None


@pytest.mark.parametrize(
    "threshold, fires",
    [(-0.3, True), (-0.6, True), (-0.6249, True), (-0.625, False), (-0.95, False)],
)
def test_the_threshold_decides_how_angry_is_angry_enough(threshold, fires):
    # "worst service ever" scores -0.6249: at or below the threshold fires.
    urgency = SentimentAnalyser(threshold).urgency("worst service ever")
    assert (urgency == 0.62) if fires else (urgency is None)


@pytest.mark.parametrize(
    "story, text, hint, score",
    [
        ("an English complaint is scored", FURIOUS, None, -0.865),
        ("a neutral question scores zero", "where is my order?", None, 0.0),
        ("a single word is scored, though it never escalates alone", "Terrible!!!", None, -0.6093),
        ("a Spanish complaint is not scored", "esto es una mierda, quiero hablar con alguien", None, None),
        ("English in a Spanish conversation is not scored", FURIOUS, "es", None),
        ("emoji alone have no language to score", "😡😡😡", None, None),
        ("half the words English is not enough", "horrible servicio", None, None),
        ("a Spanish 'it does not work' (the 'no' is English too)", "no funciona", None, None),
        ("German with an English intensifier", "total schlecht", None, None),
        ("emoji in an English conversation are read by VADER", "🙂", "en", 0.4033),
    ],
)
def test_score_is_the_compound_score_or_none_when_unreadable(story, text, hint, score):
    assert SentimentAnalyser(-0.6).score(text, hint) == score


def test_a_huge_message_is_scored_quickly():
    rant = (FURIOUS + " ") * 1400  # about 64 kB, WhatsApp's limit
    assert len(rant) > 30 * MAX_SCORED_CHARS
    analyser = SentimentAnalyser(-0.6)
    analyser.urgency(FURIOUS)  # load the models first: time only the scoring
    started = time.perf_counter()
    assert analyser.urgency(rant) == 1.0
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("threshold", [0.0, 0.2, 1.0, -1.01, -3.0])
def test_a_threshold_outside_negative_scores_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        SentimentAnalyser(threshold)


@pytest.mark.parametrize("languages", [("en", "es"), ("pt-BR",), ("fr",)])
def test_languages_vader_cannot_read_are_refused(languages):
    with pytest.raises(ValueError, match="cannot read"):
        SentimentAnalyser(-0.6, languages)


def test_language_tags_are_accepted_by_their_primary_subtag():
    assert SentimentAnalyser(-0.6, ("EN-us",)).urgency(FURIOUS) == 0.86


def test_no_languages_turns_the_analyser_off():
    analyser = SentimentAnalyser(-0.6, ())
    assert analyser.urgency(FURIOUS, "en") is None
    assert analyser.score(FURIOUS, "en") is None


def _run(script: str) -> str:
    """Run `script` in a fresh interpreter (nothing loaded yet) and return its stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_loads_no_model_and_hinted_or_short_messages_never_load_langid():
    out = _run("""
        import sys
        from routing.sentiment import SentimentAnalyser
        print("vaderSentiment" in sys.modules, "py3langid" in sys.modules)
        analyser = SentimentAnalyser(-0.5)
        print(analyser.urgency("This is the worst service ever, I am furious!!!", "en"))
        print(analyser.urgency("so bad"), analyser.urgency("me da asco"))
        print("vaderSentiment" in sys.modules, "py3langid" in sys.modules)
        print(analyser.urgency("I am sick of waiting for my refund"))
        print("py3langid" in sys.modules)
    """)
    assert out.splitlines() == ["False False", "0.86", "0.58 None", "True False", "0.51", "True"]


def test_concurrent_first_messages_load_the_language_model_once():
    out = _run("""
        import threading
        from py3langid.langid import LanguageIdentifier
        from routing.sentiment import SentimentAnalyser

        loads = []
        original = LanguageIdentifier.from_model_file.__func__

        def counting(cls, *args, **kwargs):
            loads.append(1)
            return original(cls, *args, **kwargs)

        LanguageIdentifier.from_model_file = classmethod(counting)
        analyser = SentimentAnalyser(-0.6)
        start = threading.Barrier(8)
        results = []

        def first_message():
            start.wait()
            results.append(analyser.urgency("This is the worst service ever, I am furious!!!"))

        threads = [threading.Thread(target=first_message) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(loads), sorted(set(results)))
    """)
    assert out == "1 [0.86]"


@pytest.mark.parametrize("text", ["question 187 about my parcel", "order #86 is where?", "my order 187 arrived",
                                  "tracking 1-87/86 please"])
def test_numbers_are_order_ids_not_feelings(text):
    # VADER's lexicon holds slang numbers ("187" = murder); a customer quoting
    # an order number must not read as furious.
    assert SentimentAnalyser(-0.3).urgency(text, "en") is None
