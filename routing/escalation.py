"""Explicit requests for a human: "talk to a human", "hablar con una persona", "agent".

Phrases live in a plain text file (one per line) so a team can add the ways its
own customers ask without a code change (`ESCALATION_PHRASES_FILE`). Matching is
done on a normalized form of both sides, so case, accents, punctuation and emoji
never decide whether a request is recognised.

A phrase that starts with `=` must equal the whole normalized message; every
other phrase may appear anywhere in the message, on word boundaries.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import Path

DEFAULT_PHRASES_FILE = Path(__file__).with_name("escalation_phrases.txt")

# Marks a phrase that must be the whole message ("agent" typed alone) rather
# than a part of it: single words like that fire on ordinary sentences.
WHOLE_MESSAGE_MARK = "="

# Anything that is not a letter or a digit separates words: punctuation,
# emoji, symbols, and the underscore that \w would otherwise keep.
_SEPARATORS = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Return `text` casefolded, without accents, with every run of punctuation,
    emoji or whitespace turned into one space, and no leading/trailing space."""
    folded = text.casefold()
    if not folded.isascii():  # most messages are ASCII: skip the per-character pass
        decomposed = unicodedata.normalize("NFKD", folded)
        folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SEPARATORS.sub(" ", folded).strip()


def _normalize_phrase(line: str) -> str:
    """Normalize one phrase, keeping its whole-message mark; '' when nothing is left."""
    line = line.strip()
    if line.startswith(WHOLE_MESSAGE_MARK):
        body = normalize(line[len(WHOLE_MESSAGE_MARK):])
        return WHOLE_MESSAGE_MARK + body if body else ""
    return normalize(line)


def load_phrases(path: str | None = None) -> tuple[str, ...]:
    """Read escalation phrases from a UTF-8 file, one per line, and return them
    normalized, de-duplicated, in file order.

    Blank lines and lines starting with `#` are ignored. `None` (or "") reads the
    bundled `routing/escalation_phrases.txt`. Whole-message phrases keep their
    leading `=`. Raises `OSError` when the file cannot be read.
    """
    source = Path(path) if path else DEFAULT_PHRASES_FILE
    phrases: dict[str, None] = {}
    for line in source.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        phrase = _normalize_phrase(stripped)
        if phrase:
            phrases[phrase] = None
    return tuple(phrases)


def _trie_pattern(phrases: set[str]) -> str:
    """A regex alternation of `phrases` factored as a character trie.

    A flat "a|b|c" of a few hundred phrases is retried phrase by phrase at every
    position of the message; the trie shares prefixes, so each position costs
    one walk down the tree (about 4x faster on the bundled list).
    """
    root: dict = {}
    for phrase in phrases:
        node = root
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}  # end of a phrase

    def render(node: dict) -> str:
        branches = [re.escape(ch) + render(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # A phrase may end here while longer ones go on: the rest is optional,
        # tried first (greedy) so the longest phrase wins.
        return f"(?:{body})?" if "" in node else body

    return render(root)


@lru_cache(maxsize=32)
def _compile(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for a whole phrase set; None when the set is empty.

    Phrases are normalized again here so a hand-built tuple behaves like a
    loaded one. A normalized message holds only letters, digits and single
    spaces, so a regex word boundary is exactly "a space or either end of the
    message".
    """
    whole, anywhere = set(), set()
    for raw in phrases:
        phrase = _normalize_phrase(raw)
        if phrase.startswith(WHOLE_MESSAGE_MARK):
            whole.add(phrase[len(WHOLE_MESSAGE_MARK):])
        elif phrase:
            anywhere.add(phrase)
    parts = []
    if whole:
        parts.append(rf"^(?:{_trie_pattern(whole)})$")
    if anywhere:
        parts.append(rf"\b(?:{_trie_pattern(anywhere)})\b")
    return re.compile("|".join(parts)) if parts else None


def is_explicit_request(text: str | None, phrases: tuple[str, ...]) -> bool:
    """True when `text` asks for a human according to `phrases`: the normalized
    text equals a `=` phrase, or contains another phrase as whole words.
    None, empty or punctuation-only text is never a request."""
    if not text:
        return False
    pattern = _compile(tuple(phrases))
    if pattern is None:
        return False
    normalized = normalize(text)
    return bool(normalized) and pattern.search(normalized) is not None
