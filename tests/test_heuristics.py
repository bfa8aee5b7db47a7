"""Heuristic filters: every rule fires with its own reason, thresholds are options, and on real
ShareGPT conversations each rejection is re-checked independently."""
from __future__ import annotations

import re

import polars as pl
import pytest
import regex

from curation.heuristics import DEFAULT_BOILERPLATE, DEFAULT_REFUSALS, HeuristicsOptions, heuristics
from curation.records import MESSAGES, render_text
from curation.repetition import repetition_stats
from curation.step import StepContext

GOOD_Q = "Could you explain how photosynthesis works in plants?"
GOOD_A = ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. Chlorophyll in the "
          "leaves absorbs light, which drives reactions that split water and fix carbon into glucose.")
VOCAB = ("river stone cloud maple orange violet thunder meadow silver garden window candle harbor lantern "
         "forest pepper copper velvet marble breeze island canyon falcon jasmine summit willow ember prism "
         "quartz saddle timber walnut").split()


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def qa(answer: str, question: str = GOOD_Q) -> list[dict]:
    return conv(("user", question), ("assistant", answer))


def frame(rows: list[list[dict] | str]) -> pl.DataFrame:
    msgs = [r if isinstance(r, list) else [] for r in rows]
    texts = [render_text(r) if isinstance(r, list) else r for r in rows]
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(rows))], "messages": msgs, "text": texts,
                         "source": "test", "extra": list(range(len(rows)))}, schema_overrides={"messages": MESSAGES})


def reasons(rows, **opts) -> list[str | None]:
    df = frame(rows)
    kept, rejected = heuristics(df, HeuristicsOptions(**opts), StepContext())
    assert len(kept) + len(rejected) == len(df)
    got = dict(rejected.select("id", "reason").iter_rows())
    return [got.get(i) for i in df["id"]]


def distinct_words(n: int, start: int = 0) -> list[str]:
    return [f"{VOCAB[(i + start) % len(VOCAB)]}{chr(97 + (i + start) // len(VOCAB) % 26)}" for i in range(n)]


CASES = {
    "empty_turn": conv(("user", GOOD_Q), ("assistant", "   "), ("user", "thanks"), ("assistant", GOOD_A)),
    "no_assistant_turn": conv(("user", GOOD_Q)),
    "not_user_first": conv(("assistant", GOOD_A), ("user", GOOD_Q), ("assistant", GOOD_A)),
    "refusal": qa("I'm sorry, but I cannot help with that request. " + GOOD_A),
    "boilerplate": qa(GOOD_A + " As an AI language model, I have no opinions of my own."),
    "too_few_words": qa("Yes."),
    "mean_word_length": qa("a b c d e f g h i j k l m n o p"),
    "symbol_ratio": qa("# Heading\n# Chapter one... continues...\n# Chapter two... further...\n"
                       "# Chapter three... with #hashtags and #another"),
    "non_alpha_ratio": qa(" ".join(["→", "★", "~~", "**", "✓"] * 4) + " and some ten plain words here between these odd marks"),
    "repeated_lines": qa("\n".join(["Buy cheap watches now at the best price"] * 4 + ["Contact us for details today"])),
    "repeated_paragraphs": qa("\n\n".join(
        ["First we prepare the soil carefully.", "Then we plant the seeds in rows.",
         "Then we plant the seeds in rows.", "Finally we water them every day."])),
    "top_ngram_fraction": qa(" ".join(w + " of the" for w in distinct_words(30)) + " " + " ".join(distinct_words(40, 30))),
    "duplicate_ngram_fraction": qa(" ".join(distinct_words(80) + distinct_words(30, 100) * 3)),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_each_rule_rejects_with_its_own_reason(rule):
    assert reasons([qa(GOOD_A), CASES[rule]]) == [None, rule]


def test_too_many_words_is_an_option():
    assert reasons([qa(GOOD_A)], max_words=10) == ["too_many_words"]
    assert reasons([qa(GOOD_A)], max_words=100) == [None]


@pytest.mark.parametrize("rule,option", [
    ("too_few_words", {"min_words": None}), ("mean_word_length", {"min_mean_word_length": None}),
    ("symbol_ratio", {"max_symbol_ratio": None}), ("non_alpha_ratio", {"max_non_alpha_ratio": 0.9}),
    ("refusal", {"refusal_patterns": []}), ("boilerplate", {"boilerplate_patterns": []}),
    ("not_user_first", {"require_user_first": False}), ("no_assistant_turn", {"require_assistant": False}),
    ("empty_turn", {"reject_empty_turns": False}),
    ("repeated_lines", {"max_duplicate_line_fraction": None, "max_duplicate_line_char_fraction": None}),
    ("top_ngram_fraction", {"max_top_ngram_fraction": None}),
    ("duplicate_ngram_fraction", {"max_duplicate_ngram_fraction": {10: 0.5}}),
])
def test_switching_a_rule_off_lets_its_row_through(rule, option):
    got = reasons([CASES[rule]], **option)[0]
    assert got != rule


def test_all_failed_rules_are_listed_and_counted():
    df = frame([qa("As an AI model I say a b c d e f g h i j"), qa(GOOD_A)])
    ctx = StepContext()
    kept, rejected = heuristics(df, HeuristicsOptions(), ctx)
    row = rejected.row(0, named=True)
    assert row["reason"] == "boilerplate" and "mean_word_length" in row["failed_rules"]
    assert row["stage"] == "heuristics" and row["extra"] == 0
    assert ctx.stats["by_reason"] == {"boilerplate": 1}
    assert ctx.stats["rule_hits"]["mean_word_length"] == 1
    assert kept.columns == df.columns


def test_refusal_is_looked_for_only_where_an_answer_opens():
    late = GOOD_A + " " + " ".join(distinct_words(60)) + ". I'm sorry, but I cannot say more about the weather."
    assert reasons([qa(late)]) == [None]
    assert reasons([qa(late)], refusal_window=5000) == ["refusal"]


def test_custom_patterns_replace_the_defaults():
    answer = "Certainly not, that is forbidden. " + GOOD_A
    assert reasons([qa(answer)]) == [None]
    assert reasons([qa(answer)], refusal_patterns=[r"^certainly not\b"]) == ["refusal"]
    assert reasons([qa(GOOD_A + " Subscribe to our newsletter!")], boilerplate_patterns=["subscribe to our newsletter"]) \
        == ["boilerplate"]


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't assist with that.", "I’m sorry, but I am unable to do this.",
    "I cannot fulfill this request.", "I apologize, but I cannot provide that information.",
    "I must decline to answer.",
])
def test_default_refusals_match_common_phrasings(text):
    assert any(re.search("(?i)" + p, text) for p in DEFAULT_REFUSALS)


def test_text_rules_read_the_answer_unless_told_otherwise():
    long_question = " ".join(distinct_words(40))
    row = qa("Sure.", question=long_question)
    assert reasons([row]) == ["too_few_words"]
    assert reasons([row], apply_to="text") == [None]


def test_plain_text_rows_skip_conversation_rules():
    refusal_like = "If people are disillusioned by that remark, I'm sorry, but I cannot change the past for anyone."
    assert reasons([GOOD_A, "ok", refusal_like]) == [None, "too_few_words", None]
    assert reasons([GOOD_A + " Lorem ipsum dolor sit amet."]) == ["boilerplate"]


def test_ratio_rules_wait_for_enough_words():
    assert reasons([qa("Go ahead... make my day.")]) == [None]
    assert reasons([qa("Go ahead... make my day.")], ratio_min_words=3) == ["symbol_ratio"]


def test_repetition_is_measured_per_assistant_turn():
    """A conversation revising the same paragraph twice repeats itself across turns, legitimately."""
    para = " ".join(distinct_words(80))
    row = conv(("user", GOOD_Q), ("assistant", para), ("user", "Again please"), ("assistant", para))
    assert reasons([row]) == [None]
    assert reasons([row], apply_to="text") == ["repeated_lines"]  # the rendered text repeats the line


def test_repetition_statistics_by_hand():
    stats = repetition_stats(pl.Series(["the cat sat on the mat " * 10, "one two three four five six seven " * 2, ""]))
    # "the cat" 10 times x 6 letters over 170 letters; 5-grams after the first cycle cover 9 of 10 cycles
    assert stats["top_2"][0] == pytest.approx(60 / 170)
    assert stats["dup_5"][0] == pytest.approx(0.9)
    assert stats["dup_7"][1] == pytest.approx(0.5) and stats["dup_8"][1] == 0.0
    assert stats.row(2) == (0.0,) * stats.width


def test_sharegpt_rejections_hold_when_rechecked(sharegpt_df):
    """Real conversations: the conversation-rule reasons are re-derived here in plain Python."""
    ctx = StepContext()
    kept, rejected = heuristics(sharegpt_df, HeuristicsOptions(), ctx)
    assert len(kept) + len(rejected) == len(sharegpt_df)
    assert set(kept.columns) == set(sharegpt_df.columns)
    assert len(kept) > len(sharegpt_df) / 3
    refusal = re.compile("(?i)" + "|".join(f"(?:{p})" for p in DEFAULT_REFUSALS))
    boiler = re.compile("(?i)" + "|".join(f"(?:{p})" for p in DEFAULT_BOILERPLATE))
    for row in rejected.iter_rows(named=True):
        roles = [m["role"] for m in row["messages"]]
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        non_system = [r for r in roles if r != "system"]
        checks = {
            "empty_turn": any(not m["content"].strip() for m in row["messages"]),
            "no_assistant_turn": "assistant" not in roles,
            "not_user_first": bool(non_system) and non_system[0] != "user",
            "refusal": any(refusal.search(a[:300]) for a in answers),
            "boilerplate": any(boiler.search(a) for a in answers),
            "too_few_words": len([w for w in "\n".join(answers).split() if regex.search(r"[^\p{P}\p{S}]", w)]) < 3,
        }
        if row["reason"] in checks:
            assert checks[row["reason"]], (row["reason"], row["text"][:300])
        for earlier in list(checks)[:5]:  # conversation rules come first: none may hold for a later reason
            if earlier == row["reason"]:
                break
            assert not checks[earlier], (earlier, row["reason"], row["text"][:200])
    assert ctx.stats["by_reason"]  # the real data has junk in it


def test_empty_input():
    kept, rejected = heuristics(frame([]), HeuristicsOptions(), StepContext())
    assert len(kept) == len(rejected) == 0


def test_ngram_keys_compare_on_all_bits():
    """Keys that differ only in their lowest bits are different n-grams. (Sorting them packed with
    their index merged such keys, and which ones merged depended on the batch: the same row could
    pass alone and fail beside others.)"""
    import numpy as np

    from curation.repetition import _runs

    order, starts = _runs(np.array([8, 9, 8, 11], dtype=np.uint64))
    runs = [sorted(order[a:b].tolist()) for a, b in zip(starts, [*starts[1:], 4])]
    assert sorted(runs) == [[0, 2], [1], [3]]
    text = "alpha beta gamma delta " * 6 + "one two three"
    alone = repetition_stats(pl.Series([text]))
    beside = repetition_stats(pl.Series(["noise words here " * 50, text, "more filler text " * 40]))
    assert alone.row(0) == beside.row(1)


def test_repetition_statistics_in_bounded_passes_are_the_whole_batchs(sharegpt_df, monkeypatch):
    """A batch's texts go through in passes of CHUNK_TEXTS (memory), with every figure unchanged."""
    from curation import repetition

    texts = sharegpt_df["text"].head(230)
    whole = repetition.repetition_stats(texts)
    monkeypatch.setattr(repetition, "CHUNK_TEXTS", 37)
    assert repetition.repetition_stats(texts).equals(whole)


def _gopher_by_hand(text: str, top_ns, dup_ns) -> dict[str, float]:
    """Gopher's repetition figures from word tuples in plain Python (no hashes, no shortcuts)."""
    from collections import Counter

    words = text.lower().split()
    total = sum(map(len, words))
    out = {}
    for n in top_ns:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        most = max(grams.values(), default=0)
        best = max((sum(map(len, g)) for g, c in grams.items() if c == most), default=0) if most >= 2 else 0
        out[f"top_{n}"] = best * most / total if total else 0.0
    for n in dup_ns:
        seen, covered = set(), [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i:i + n])
            if gram in seen:
                covered[i:i + n] = [True] * n
            seen.add(gram)
        out[f"dup_{n}"] = sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0
    return out


@pytest.mark.parametrize("top_ns,dup_ns", [((2, 3, 4), (5, 6, 7, 8, 9, 10)), ((3,), (7,)), ((), (5, 10)), ((4,), ())])
def test_repetition_statistics_equal_gophers_definition(sharegpt_df, top_ns, dup_ns):
    """Each n only groups the positions whose shorter n-gram repeats (the rest occur once): every figure
    still equals the definition, whichever n are asked for."""
    texts = sharegpt_df["text"].head(120).to_list() + [
        "the cat sat on the mat " * 10, "a b a b a b c", "x", "", "one two three four five six seven " * 3]
    stats = repetition_stats(pl.Series(texts), top_ns, dup_ns)
    assert stats.columns == [f"top_{n}" for n in top_ns] + [f"dup_{n}" for n in dup_ns]
    for text, got in zip(texts, stats.iter_rows(named=True)):
        assert got == pytest.approx(_gopher_by_hand(text, top_ns, dup_ns), abs=1e-12), text[:80]


def test_token_counts_match_a_split_of_the_text():
    """The word counts come from one regex count: the same as splitting on whitespace and testing each
    token, through tabs, no-break spaces, line breaks and tokens of punctuation alone."""
    from curation.heuristics import GOPHER_WORD, _count_tokens
    from curation.prose import WORD

    texts = ["![US Flag SVG](https://x.org/a.svg)", "a\tb\u00a0c\n\nd  e", " -- ... 18 $3 — é ", "", "   ",
             "word, word; (word) 'quoted' — …", "x=1; y = 2 → z"]
    df = pl.DataFrame({"t": texts})
    for holding in (GOPHER_WORD, WORD, None):
        count, chars = _count_tokens(pl.col("t"), holding)
        got = df.select(count.alias("n"), chars.alias("c"))
        for text, (n, c) in zip(texts, got.iter_rows()):
            tokens = [w for w in text.split() if holding is None or regex.search(holding, w)]
            assert (n, c) == (len(tokens), sum(map(len, tokens))), (holding, text)
