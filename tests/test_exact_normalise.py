"""exact_dedup's key: the normalised text (NFKC, lowercase, punctuation and symbols as spaces, whitespace
folded) equals a plain-Python reading of the rule, the fast paths (NFKC only where a text is not ASCII,
whitespace folded without rewriting single spaces) included."""
from __future__ import annotations

import unicodedata

import polars as pl
import regex

from curation.exact_dedup import ExactDedupOptions, key_hashes, normalised_text

TEXTS = ["Plain ASCII, with punctuation!", "the ﬁle ﬂow", "Ｆｕｌｌ　ｗｉｄｔｈ", "no\u00a0break\tand\ttabs",
         "  leading and trailing \n", "e\u0301 and é", "emoji 🙂 and → arrows", "", "line\r\nbreaks\n\n\nmany",
         "ALL CAPS—and an em dash", "x²+y² = z²", "\u2028separator\u2029", "a\u000bb\u000cc"]


def by_hand(text: str, lowercase: bool, strip_punctuation: bool) -> str:
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = regex.sub(r"[\p{P}\p{S}]+", " ", text)
    return regex.sub(r"\s+", " ", text).strip()


def test_normalised_text_is_the_rule_by_hand():
    df = pl.DataFrame({"text": TEXTS})
    for lowercase in (True, False):
        for strip in (True, False):
            got = df.select(normalised_text("text", lowercase, strip)).to_series().to_list()
            assert got == [by_hand(t, lowercase, strip) for t in TEXTS], (lowercase, strip)


def test_key_hashes_keep_the_asked_columns_and_key_equal_texts_alike():
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": ["The ﬁle!", "the  file", "another file"]})
    keys = key_hashes(df, ExactDedupOptions(), "id")
    assert keys.columns == ["id", "k1", "k2"]
    assert keys.row(0)[1:] == keys.row(1)[1:] != keys.row(2)[1:]
