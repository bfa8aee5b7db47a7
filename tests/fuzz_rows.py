"""Hypothesis strategies for rows as they come: random JSON values, layout-shaped rows with a wrong type
in any field, broken Unicode, deep nesting, huge strings, and lines of random bytes. Shared by the
fuzz test and the Ray equality test."""
from __future__ import annotations

import json

from hypothesis import strategies as st

# every code point, surrogate halves and control characters included
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT = st.one_of(st.text(ANY_CHAR, max_size=40), st.sampled_from(["", " ", "hello world", "How are you today?",
                                                                  "\ud800", "a\x00b", "é" * 3]),
                 st.text(min_size=3000, max_size=3000, alphabet="ab \n"))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
ROLE = st.one_of(st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "bot"]), JSON)
PART = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(TEXT, JSON)}),
                 st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file"])}), JSON)
CONTENT = st.one_of(TEXT, JSON, st.lists(PART, max_size=3))
TURN = st.one_of(st.fixed_dictionaries({"role": ROLE, "content": CONTENT}),
                 st.fixed_dictionaries({"from": ROLE, "value": CONTENT}), JSON)
SHAPED = st.one_of(
    st.fixed_dictionaries({"messages": st.one_of(st.lists(TURN, max_size=4), JSON)},
                          optional={"meta": JSON, "id": JSON}),
    st.fixed_dictionaries({"conversations": st.one_of(st.lists(TURN, max_size=4), JSON)}, optional={"label": JSON}),
    st.fixed_dictionaries({"instruction": CONTENT, "output": CONTENT}, optional={"input": JSON, "system": JSON}),
    st.fixed_dictionaries({"prompt": CONTENT, "response": CONTENT}),
    st.fixed_dictionaries({"text": st.one_of(TEXT, JSON)}, optional={"score": JSON}),
)
# well-formed rows whose text is full of what breaks writers: surrogate halves, NUL, controls, emoji
NASTY = st.text(st.sampled_from(list("ab .\n\t") + ["\ud800", "\udfff", "\x00", "\x1b", "\x0b", "\u200b", "é",
                                                   "\U0001f600", "\ufeff"]), min_size=1, max_size=30)
WELL_FORMED = st.one_of(
    st.fixed_dictionaries({"messages": st.tuples(NASTY, NASTY).map(
        lambda pa: [{"role": "user", "content": pa[0]}, {"role": "assistant", "content": pa[1]}])},
        optional={"meta": JSON}),
    st.fixed_dictionaries({"prompt": NASTY, "response": NASTY}, optional={"label": JSON}),
    st.fixed_dictionaries({"text": NASTY}, optional={"note": NASTY, "meta": JSON}),
)
DEEP = st.integers(min_value=50, max_value=3000).map(lambda n: "[" * n + "]" * n)


def _line(value) -> bytes:
    # json.dumps escapes surrogates (\ud800), as real dumps of broken text do; it cannot write nan
    # in strict JSON, so allow_nan writes NaN, which Python's reader (and many dumps) accept
    return json.dumps(value).encode("ascii")


LINE = st.one_of(WELL_FORMED.map(_line), SHAPED.map(_line), JSON.map(_line), DEEP.map(lambda d: b'{"text": "x", "m": ' + d.encode() + b"}"),
                 st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b))
FILE_LINES = st.lists(LINE, min_size=1, max_size=25)
