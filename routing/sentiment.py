"""Angry customers: a lexicon-based (VADER) escalation trigger on the customer's text.

VADER scores a text from -1 (most negative) to +1 with a compound score; its
lexicon, emoji table and rules for CAPS, "!!!" and negation are English only, so
it scores any other language as neutral. That is why the analyser first decides
whether it can read the text at all, and stays silent when it cannot:

- a language hint (the conversation's `preferred_language`, "en", "pt-BR") is
  trusted by its primary subtag, even over a text that looks English, because the
  conversation's language is known better than one message's;
- without a hint, fewer than `SHORT_TEXT_WORDS` words are too few for language
  identification, so most of their words must be ones VADER or everyday English
  knows ("ok thanks", "hate this");
- longer texts go to py3langid, trusted when it is confident; when it is not
  (slang, emoji, "I am so angry" read as Nigerian Pidgin) the word count decides.

The two models load on first use, once per process: py3langid's takes about a
second and is only needed for longer texts without a hint.
"""
from __future__ import annotations

import re
import threading

# Languages VADER's lexicon is written in.
READABLE_LANGUAGES = frozenset({"en"})

# Fewer words than this are too short to judge: one word ("terrible") is not a mood.
MIN_WORDS = 2
# Below this many words py3langid guesses ("terrible" → Basque); count words instead.
SHORT_TEXT_WORDS = 4
# py3langid's probability at or above which its language is taken as read.
LANGID_CONFIDENT = 0.5
# VADER's cost grows faster than the text; a long rant has said its mood by here.
MAX_SCORED_CHARS = 2000

# Everyday English words VADER's lexicon leaves out (it lists only words with a
# sentiment). "a" and "me" are left out too: they are just as common in Spanish,
# Portuguese and French, where they would make "me da asco" look English.
COMMON_ENGLISH_WORDS = frozenset("""
    i you he she it we they my your our their his her its this that these those
    the an is are was were be been am do does did have has had will would can could
    should must not don't dont doesn't didn't can't cant won't isn't wasn't i'm im
    it's you're that's what's where's to of in on at for with from by about and or
    but if so than then just still yet again ever never now already why what where
    when who how which there here all any some every anyone someone nobody nothing
    very too much more really get got give want need wait waiting waited call reply
    answer answered tell told come came go going gone make made take send sent pay
    paid order orders delivery delivered package parcel money refund account app
    bot service support company time day days week hour hours today yesterday
    tomorrow phone number email message messages person people human agent manager
""".split())

# A word is a run of letters, with inner apostrophes kept ("don't", "c'est").
_NUMBER = re.compile(r"(?<!\w)[\d.,:/#-]*\d[\d.,:/#-]*(?!\w)")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")

_models_lock = threading.Lock()
_vader = None
_langid = None


def _vader_analyser():
    """The process's VADER analyser, built on first use."""
    global _vader
    if _vader is None:
        with _models_lock:
            if _vader is None:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                _vader = SentimentIntensityAnalyzer()
    return _vader


def _language_identifier():
    """The process's py3langid identifier (probabilities, all languages), built on
    first use. Our own instance, so nobody's `py3langid.set_languages` narrows it."""
    global _langid
    if _langid is None:
        with _models_lock:
            if _langid is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _langid


def primary_subtag(tag: str | None) -> str | None:
    """"pt-BR" → "pt", "en_GB" → "en"; None for a missing or blank tag."""
    if not tag or not tag.strip():
        return None
    return re.split(r"[-_]", tag.strip(), maxsplit=1)[0].casefold()


def _reads_as_english(words: list[str]) -> bool:
    """More than half of `words` are ones VADER knows (its lexicon, intensifiers
    such as "extremely", negations) or everyday English."""
    lexicon = _vader_analyser().lexicon
    from vaderSentiment.vaderSentiment import BOOSTER_DICT, NEGATE

    folded = [word.casefold().replace("’", "'") for word in words]
    known = sum(1 for word in folded
                if word in lexicon or word in BOOSTER_DICT or word in NEGATE or word in COMMON_ENGLISH_WORDS)
    return known * 2 > len(words)


class SentimentAnalyser:
    """Scores customer texts with VADER and says when one is negative enough to
    hand the conversation to a human.

    `threshold` is a VADER compound score in [-1, 0): a text fires when its score
    is at or below it (-0.6 fires on "worst service ever, I am furious!!!" and
    not on "this sucks"). `languages` are the primary subtags the analyser agrees
    to read; each must be one VADER reads, and an empty tuple turns it off.
    Raises `ValueError` for a threshold or language outside those.
    """

    def __init__(self, threshold: float, languages: tuple[str, ...] = ("en",)):
        if not -1.0 <= threshold < 0.0:
            raise ValueError(f"sentiment threshold must be a compound score in [-1, 0), got {threshold!r}")
        subtags = {primary_subtag(lang) for lang in languages} - {None}
        unreadable = sorted(subtags - READABLE_LANGUAGES)
        if unreadable:
            raise ValueError(f"sentiment analysis cannot read {', '.join(unreadable)}; "
                             f"it reads {', '.join(sorted(READABLE_LANGUAGES))}")
        self.threshold = threshold
        self.languages = frozenset(subtags)

    def language(self, text: str, language_hint: str | None = None) -> str | None:
        """The language this analyser takes `text` to be in: the hint's primary
        subtag when there is one, else a guess; None when there are no words."""
        hinted = primary_subtag(language_hint)
        if hinted:
            return hinted
        words = _WORD.findall(text)
        if not words:
            return None
        if len(words) < SHORT_TEXT_WORDS:
            return "en" if _reads_as_english(words) else None
        detected, confidence = _language_identifier().classify(text)
        if confidence >= LANGID_CONFIDENT:
            return detected
        return "en" if _reads_as_english(words) else None

    def score(self, text: str | None, language_hint: str | None = None) -> float | None:
        """VADER's compound score of `text` (-1 … 1, up to its first
        `MAX_SCORED_CHARS` characters); None when there is no text or it is not
        in a language this analyser reads."""
        if not self.languages or not text or not text.strip():
            return None
        text = text[:MAX_SCORED_CHARS]
        if self.language(text, language_hint) not in self.languages:
            return None
        # VADER's lexicon scores slang numbers ("187" is -3.1, "86" negative):
        # in support chats numbers are order ids and prices, never feelings.
        return _vader_analyser().polarity_scores(_NUMBER.sub(" ", text))["compound"]

    def urgency(self, text: str | None, language_hint: str | None = None) -> float | None:
        """How urgently an angry `text` needs a human, from 0 to 1 to 2 decimals
        (the negated compound score); None when it should not escalate: no text,
        fewer than `MIN_WORDS` words, a language this analyser cannot read, or a
        score above the threshold."""
        if not text or len(_WORD.findall(text[:MAX_SCORED_CHARS])) < MIN_WORDS:
            return None
        compound = self.score(text, language_hint)
        if compound is None or compound > self.threshold:
            return None
        return round(min(1.0, -compound), 2)
