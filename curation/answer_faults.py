"""Faults of one answer, as pure functions on strings: each rule written once, for curation (the
`answer_faults` step, `heuristics`' refusal rule) and for evaluation (failure rates of generated answers).

    empty(answer)                        nothing but whitespace (zero-width characters included)
    truncated(answer)                    stops partway: open code fence, unfinished table row, empty list
                                         item, a colon announcing nothing, a trailing fragment -> a short detail
    repeats_prompt(prompt, answer)       most of the answer's word 3-grams are the prompt's
    language_mismatch(prompt, answer)    (prompt language, answer language) when langid is confident both
                                         differ and the prompt does not ask for a translation
    refusal(answer)                      opens with a refusal, or holds boilerplate ("As an AI language model")
    degenerate_repetition(answer)        loops: one phrase over and over, or Gopher's n-gram repetition
    ends_with_user(messages)             the conversation's last turn is the user's (no answer to it)

Every function is deterministic (langid is a fixed naive Bayes model; nothing is sampled).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

import numpy as np

from curation.prose import is_code_line
from curation.prose import prose as text_prose
from curation.repetition import DUP_NGRAM_LIMITS, TOP_NGRAM_LIMITS, exceeds_limits

_APOS = "['’]"
_CANT = rf"(?:cannot|can{_APOS}t|can not|won{_APOS}t|am unable to|{_APOS}m unable to|am not able to|{_APOS}m not able to)"
# Case-insensitive; an answer *opening* (first REFUSAL_WINDOW characters) with one of these refuses.
REFUSAL_PATTERNS = [
    rf"\bI(?:{_APOS}m| am) sorry,? (?:but )?(?:I|as an AI[a-z ]*,? I) (?:can(?:not|{_APOS}t)|am (?:not able|unable)|"
    rf"{_APOS}m (?:not able|unable)|won{_APOS}t|do not have|don{_APOS}t have (?:access|the ability))",
    rf"\bI apologi[sz]e,? but I (?:can(?:not|{_APOS}t)|am (?:not able|unable)|won{_APOS}t)",
    rf"\bI {_CANT} (?:help|assist) (?:you )?with (?:that|this|your request)",
    rf"\bI {_CANT} (?:comply|fulfil|fulfill|provide (?:that|this|you with)|create (?:that|this|content)|"
    r"generate (?:that|this|content)|engage in)",
    r"\bI must (?:respectfully )?decline\b",
    rf"\bI(?:{_APOS}m| am) not (?:comfortable|going to) (?:help|assist|provide|create|generate|write)",
]
REFUSAL_WINDOW = 300
# Case-insensitive; an answer holding one of these anywhere is boilerplate.
BOILERPLATE_PATTERNS = [
    r"\bas an AI(?: language)? model\b",
    r"\bas a (?:large )?language model\b",
    r"\bas an AI assistant\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off)\b",
    rf"\bI (?:do not|don{_APOS}t) have (?:access to|the ability to (?:access|browse)) (?:the internet|real-time)",
    r"\blorem ipsum\b",
    # the chat service's own error pages, saved as if they were answers (ShareGPT)
    r"\btoo many requests in 1 hour\b",
    r"\ban error occurred\. if this issue persists please contact us\b",
    r"\bsomething went wrong(?:,|\.) please try reloading the conversation\b",
    r"\bchatgpt is at capacity\b",
    r"^\W*network error\W*$",
]


def any_of(patterns: list[str]) -> str:
    """One case-insensitive regex matching any of `patterns` (the same syntax in `re` and polars)."""
    return "(?i)(?:" + "|".join(f"(?:{p})" for p in patterns) + ")"


_REFUSAL = re.compile(any_of(REFUSAL_PATTERNS))
_BOILERPLATE = re.compile(any_of(BOILERPLATE_PATTERNS))
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


def empty(answer: str) -> bool:
    return not (answer or "").strip().strip(_INVISIBLE).strip()


def refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer[:REFUSAL_WINDOW]) or _BOILERPLATE.search(answer))


# --- truncated ---------------------------------------------------------------------------------------

_FENCE_LINE = re.compile(r"^[ \t]*(?:```|~~~)", re.M)
_LIST_MARKER = re.compile(r"(?:[-*+•]|\d{1,3}[.)]|[a-zA-Z][.)])")
# Words a sentence does not end on: a reply cut at max_tokens stops on one of them about as often as
# running text has them (English only; other languages rely on the comma and long-line signals).
_DANGLING = frozenset(
    "a an the and or but nor so to of in on at by for with from into onto about as than that which who whose "
    "whom if because while when where is are was were be been being has have had do does did will would can "
    "could should may might must shall this these those their its our your my his her such very also".split())
_ENDS_SENTENCE = re.compile(r"[.!?。！？…:;)\]}\"'”’»`*>|~_=\-–—/\\]$|[^\w\s,(\[{]$")
_LONG_LINE_WORDS = 12


def _table_cut(text: str) -> bool:
    """The last line is a table row that stops before its closing pipe (the rows above close theirs)."""
    lines = [ln.strip() for ln in text.rstrip().split("\n")]
    last, above = lines[-1], lines[-2] if len(lines) > 1 else ""
    return last.startswith("|") and above.startswith("|") and above.endswith("|") and not last.endswith("|")


def _fragment(line: str) -> str | None:
    """Why the answer's last line reads as a sentence cut off, or None."""
    item = bool(_LIST_MARKER.match(line))
    body = _LIST_MARKER.sub("", line, count=1).strip() if item else line
    words = body.split()
    if not words or not re.search(r"[^\W\d_]", body) or body.startswith(("#", "http")) or words[-1].startswith("#"):
        return None  # nothing to read, a heading, a link, a hashtag
    last = words[-1].lower().strip("\"'“”‘’*_")
    if len(words) >= 3 and body.endswith(","):
        return "ends on a comma"
    if len(words) >= 3 and last in _DANGLING:
        return f"ends on '{last}'"
    if _ENDS_SENTENCE.search(body):
        return None
    # list items and titles end without a full stop; a long line of prose does not (read on ShareGPT:
    # 5 of 6 wrong calls of this rule in a sample of 25 were list items)
    if len(words) >= _LONG_LINE_WORDS and not item:
        return "long last line without an end"
    return None


def truncated(answer: str) -> str | None:
    """A short reason when the answer stops partway, else None (an empty answer is `empty`'s)."""
    text = (answer or "").rstrip().rstrip(_INVISIBLE).rstrip()
    if not text:
        return None
    if len(_FENCE_LINE.findall(text)) % 2:
        return "open code fence"
    if _table_cut(text):
        return "unfinished table row"
    raw_last = text.rsplit("\n", 1)[-1]
    if is_code_line(raw_last):
        return None  # code ends where it ends: a fence-less snippet or source file
    last = raw_last.strip()
    if _LIST_MARKER.fullmatch(last):
        return "empty list item"
    if last.endswith(":") and not last.startswith("|"):
        return "ends on a colon"
    return _fragment(last)


# --- repeats_prompt ------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 0))}


OPENING_WORDS = 12


def repeats_prompt(prompt: str, answer: str, share: float = 0.8) -> bool:
    """The answer echoes the prompt: most (`share`) of its word 3-grams occur in the prompt, and it
    repeats the prompt's opening (its first OPENING_WORDS words, where the request usually is).

    The opening tells an echo from a task done on pasted text: a grammar fix, a reformatted list or an
    answer picked from a multiple choice repeats the text, not the request (read on ShareGPT: without
    it, 23 of 25 sampled hits were such tasks, and a function whose docstring restates the request was
    one). An answer of under three words echoes only when it equals the prompt (case and punctuation aside)."""
    ans = _shingles(answer)
    if not ans:
        words = _WORD.findall(answer.lower())
        return bool(words) and words == _WORD.findall(prompt.lower())
    opening = _shingles(" ".join(_WORD.findall(prompt)[:OPENING_WORDS]))
    return len(ans & _shingles(prompt)) >= share * len(ans) and len(opening & ans) >= share * len(opening)


# --- language_mismatch ---------------------------------------------------------------------------------

_TRANSLATION = re.compile(r"(?i)translat|tradu|übersetz|перев|翻[译譯]|번역|翻訳|ترجم|अनुवाद")
# A prompt naming the answer's language asked for it ("in Spanish", "用英语解释").
_LANGUAGE_NAMES = {
    "en": r"english|anglais|englisch|inglés|ingles|inglese|英[语語文]|영어|англ", "es": r"spanish|español|espagnol",
    "fr": r"french|français|francais|französisch", "de": r"german|deutsch|allemand|alemán",
    "it": r"italian|italiano", "pt": r"portugu", "nl": r"dutch|nederlands", "pl": r"polish|polski",
    "ru": r"russian|русск", "uk": r"ukrain|українськ", "zh": r"chinese|中文|汉语|漢語|mandarin",
    "ja": r"japanese|日本語", "ko": r"korean|한국어", "vi": r"vietnam|tiếng việt", "ar": r"arabic|عرب",
    "hi": r"hindi|हिन्दी|हिंदी", "tr": r"turkish|türkçe", "fa": r"persian|farsi|فارسی", "id": r"indonesia",
}
MIN_LETTERS = 20
MIN_CONFIDENCE = 0.99
# langid tells scripts apart for sure, languages of one script much less so: read on ShareGPT, 5 of 16
# same-script calls were right (English prompts came out fi, da, sv, wa or la; pasted German or French
# text under an English request), 7 of 9 cross-script ones. So only a change of script is a mismatch.
LANGUAGE_CHARS = 2000


@functools.cache
def _identifier():
    from langid.langid import LanguageIdentifier, model

    class SparseIdentifier(LanguageIdentifier):
        """langid's model and answer; only the rows of the features a text has take part in the product
        (a text has a few hundred of 7,480: a dense product through a busy BLAS took up to 30 s a text)."""

        def nb_classprobs(self, fv):
            present = np.flatnonzero(fv)
            return fv[present] @ self.nb_ptc[present] + self.nb_pc

    return SparseIdentifier.from_modelstring(model, norm_probs=True)


def _script(letters: str) -> str:
    """The commonest script among some letters (Unicode name's first word; the CJK scripts are one)."""
    letters = letters[:500]
    if letters.isascii():  # every ASCII letter is LATIN: no name to look up (most texts)
        return "LATIN" if letters else ""
    names = Counter(unicodedata.name(ch, "?").split(" ")[0] for ch in letters)
    script = names.most_common(1)[0][0] if names else ""
    return "CJK" if script in ("HIRAGANA", "KATAKANA", "HANGUL") else script


_NOT_ASCII_LETTERS = re.compile(r"[^A-Za-z]+")


def _letters(text: str) -> str:
    prose = text_prose(text or "")[:LANGUAGE_CHARS]
    if prose.isascii():  # in ASCII the letters (str.isalpha) are A-Z and a-z: one regex, not a loop
        return _NOT_ASCII_LETTERS.sub("", prose)
    return "".join(ch for ch in prose if ch.isalpha())


def language(text: str) -> str | None:
    """langid's language of `text` (its prose: code, formulas and URLs left out) when it is confident, else None."""
    prose = text_prose(text or "")[:LANGUAGE_CHARS]  # enough to tell; langid reads every byte
    if sum(ch.isalpha() for ch in prose) < MIN_LETTERS:
        return None
    lang, p = _identifier().classify(prose)
    return lang if p >= MIN_CONFIDENCE else None


def language_mismatch(prompt: str, answer: str) -> tuple[str, str] | None:
    """(prompt language, answer language) when both are confident, differ and are written in different
    scripts (Korean and English, not French and English), else None. Also None when the prompt asks for a
    translation or names the answer's language, or a paragraph of the prompt is in the answer's language."""
    # the cheap condition first: most pairs share a script, and then langid (~1 ms a text) need not run
    if _script(_letters(prompt)) == _script(_letters(answer)):
        return None
    said, answered = language(prompt), language(answer)
    if said is None or answered is None or said == answered or _TRANSLATION.search(prompt):
        return None
    if re.search(_LANGUAGE_NAMES.get(answered, r"(?!)"), prompt, re.I):
        return None
    if any(language(p) == answered for p in re.split(r"\n\s*\n", prompt)):
        return None
    return said, answered


# --- degenerate_repetition -----------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")  # letters and digits; underscores split (`wins_wins_wins`)
LOOP_UNIT_WORDS = 8
LOOP_REPEATS = 5
REPETITION_MIN_WORDS = 50


def _loops(text: str) -> bool:
    """One phrase of 1..LOOP_UNIT_WORDS words LOOP_REPEATS times or more in a row (a phrase with a letter)."""
    words = [w.lower() for w in _TOKEN.findall(text)]
    if len(words) < LOOP_REPEATS:
        return False
    codes = np.unique(np.array(words), return_inverse=True)[1]
    for k in range(1, LOOP_UNIT_WORDS + 1):
        same = np.concatenate(([0], (codes[:-k] == codes[k:]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(same))  # starts and ends of runs of "word i equals word i+k"
        for start, end in zip(edges[::2], edges[1::2]):
            if end - start >= (LOOP_REPEATS - 1) * k and any(not w.isdigit() for w in words[start:start + k]):
                return True
    return False


def degenerate_repetition(answer: str) -> bool:
    """A loop (one phrase five times in a row), or Gopher's n-gram repetition above heuristics' defaults
    (texts of REPETITION_MIN_WORDS words or more)."""
    text = answer or ""
    if _loops(text):
        return True
    return len(text.split()) >= REPETITION_MIN_WORDS and exceeds_limits(text, TOP_NGRAM_LIMITS, DUP_NGRAM_LIMITS)


# --- conversations -------------------------------------------------------------------------------------

def ends_with_user(messages: list[dict]) -> bool:
    """The last turn is the user's: the conversation ends on a question nobody answered."""
    turns = [m for m in messages if m.get("role") != "system"]
    return bool(turns) and turns[-1].get("role") == "user"


# A conversation's first message that only makes sense after turns the row does not hold (ShareGPT
# conversations were often saved from the middle). Case-insensitive, on the first user turn alone.
FOLLOW_UP_PATTERNS = [
    # the whole message is a nudge or an acknowledgement
    r"^\s*(?:please |pls |ok(?:ay)?,? |now,? )?(?:continue|contiune|cont|go on|keep going|more|explain more|explane more|"
    r"tell me more|elaborate|expand(?: on (?:it|that|this))?|next|again|try again|do it again|one more|another one|"
    r"more please|same|perfect|great|thanks|thank you|thx|ok|okay|yes|no|sure|good|nice|awesome|cool|correct|wrong|"
    r"exactly|how about now|what about now|and now)\s*[.!?]*\s*$",
    # opens by pointing back
    r"^\s*(?:and|also|but|so)\b[ ,]",
    r"^\s*(?:what|how) about (?:now|it|this|that|these|those|them)\b",
    r"^\s*(?:remove|delete|drop) (?:the )?(?:points?|items?|numbers?|steps?|options?)? ?#?\d",
    # announces what it is about and ends there: "Rewrite the following script in C++"
    r"\bthe following(?: [\w+#-]+){0,4}\s*[:.]?\s*$",
]
# names an earlier turn; looked for in the message's opening words only, since text a user pastes
# further down ("as you said", "the previous one") is its own and says nothing about this chat
BACK_REFERENCE_PATTERNS = [
    r"\b(?:the|your) (?:previous|earlier) (?:answer|response|reply|message|code|list|example|output|points?|"
    r"version|story|essay|prompt|table)\b",
    r"\byour (?:last|previous) (?:answer|response|reply|message|one)\b",
    r"\b(?:you|u) (?:just )?(?:said|wrote|mentioned|suggested|gave me|listed)\b",
    r"\b(?:as|like) (?:i|we) (?:said|mentioned|discussed|agreed)\b",
    r"\byour (?:\d+|two|three|four|five|six|seven|eight|nine|ten) (?:points|ideas|suggestions|steps|options|tips)\b",
]
BACK_REFERENCE_CHARS = 200
_FOLLOW_UP = re.compile(any_of(FOLLOW_UP_PATTERNS))
_BACK_REFERENCE = re.compile(any_of(BACK_REFERENCE_PATTERNS))


def starts_mid_conversation(messages: list[dict]) -> str | None:
    """The words of the first user turn that point back to turns the row does not hold, or None."""
    first = next((m.get("content") or "" for m in messages if m.get("role") == "user"), None)
    if first is None:
        return None
    m = _FOLLOW_UP.search(first) or _BACK_REFERENCE.search(first[:BACK_REFERENCE_CHARS])
    return " ".join(m.group(0).split())[:60] if m else None
