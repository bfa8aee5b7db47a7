"""Gopher/C4-style quality rules and conversation rules, each rejection named after its rule.

Conversation rules read `messages` (rows with an empty `messages`, i.e. plain text, skip them;
boilerplate also applies to plain text):
  empty_turn          a turn whose content is blank
  no_assistant_turn   no assistant turn at all
  not_user_first      the first non-system turn is not the user's
  refusal             an assistant turn opens (first `refusal_window` characters) with a refusal
  boilerplate         an assistant turn contains boilerplate ("As an AI language model", …)
Text rules read the *answer* (all assistant turns joined; the text itself for plain rows), or the
whole `text` with `apply_to: text`. Words are whitespace tokens; "symbol-only" tokens
(punctuation/symbols only) are not counted as words (Gopher):
  too_few_words / too_many_words   word count outside [min_words, max_words]
The web-text rules (Gopher's) read the answer's *prose* (`prose_only`, the default): code blocks and
code lines, formulas, calculator notes, table and heading markup left out (curation.prose), so math
and code are not junk. In prose a word holds a letter, and numbers and bare operators (18, $3, 3/4,
-, =) count neither as words nor as symbols:
  mean_word_length                 mean word length outside [min_mean_word_length, max_mean_word_length]
  symbol_ratio                     ('#' + '...' + '…') per word above max_symbol_ratio
  non_alpha_ratio                  share of tokens without any letter above max_non_alpha_ratio
                                   (the three only from `ratio_min_words` prose words on)
  repeated_lines                   duplicate lines: share of lines or of characters too high (whole turn)
  repeated_paragraphs              the same for paragraphs (blank-line separated)
  top_ngram_fraction               characters in the most frequent 2/3/4-gram of the prose, as a share of
                                   the turn's characters, too high
  duplicate_ngram_fraction         characters in the prose's repeated 5…10-grams, likewise
The two n-gram rules only apply to prose of at least `ngram_min_words` words (in short texts one
repeated phrase is a large share by construction). `prose_only: false` gives Gopher's rules on the
whole text (GSM8K's test split then loses half its rows, mostly to `#### 18` in symbol_ratio).

A row failing several rules is rejected with the first in the order above as `reason`; all its
failed rules are listed in `failed_rules`, and `ctx.stats` counts both. Set a threshold to null to
switch its rule off.
"""
from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import Field

from curation.answer_faults import BOILERPLATE_PATTERNS, REFUSAL_PATTERNS, REFUSAL_WINDOW, any_of
from curation.prose import NUMBER_OR_OPERATOR, WORD, prose_expr
from curation.records import answer_text_expr
from curation.repetition import DUP_NGRAM_LIMITS, TOP_NGRAM_LIMITS, repetition_stats
from curation.shingles import fold_whitespace
from curation.step import StepContext, StepOptions, reject

STAGE = "heuristics"
GOPHER_WORD = r"[^\p{P}\p{S}]"  # Gopher: a token of punctuation and symbols alone is not a word
# the patterns live with the other answer faults; the names stay for recipes and tests that import them
DEFAULT_REFUSALS = REFUSAL_PATTERNS
DEFAULT_BOILERPLATE = BOILERPLATE_PATTERNS


class HeuristicsOptions(StepOptions):
    apply_to: Literal["answer", "text"] = Field(
        "answer", description="text the text rules read: the assistant answer (plain rows: their text), or the whole text")
    min_words: int | None = Field(3, ge=0, description="fewest words (too_few_words)")
    max_words: int | None = Field(10_000, ge=1, description="most words (too_many_words)")
    min_mean_word_length: float | None = Field(3.0, ge=0, description="least mean word length in characters")
    max_mean_word_length: float | None = Field(10.0, ge=0, description="greatest mean word length in characters")
    max_symbol_ratio: float | None = Field(0.1, ge=0, description="most ('#' + ellipses) per word (symbol_ratio)")
    max_non_alpha_ratio: float | None = Field(
        0.5, ge=0, le=1, description="largest share of tokens without a letter (Gopher: 0.2 for web text; "
                                     "code in answers needs more)")
    max_duplicate_line_fraction: float | None = Field(
        0.5, ge=0, le=1, description="largest share of lines repeating an earlier line (Gopher: 0.3; short code "
                                     "lines such as '}' repeat legitimately)")
    max_duplicate_line_char_fraction: float | None = Field(
        0.25, ge=0, le=1, description="largest share of characters in repeated lines (Gopher: 0.2)")
    max_duplicate_paragraph_fraction: float | None = Field(
        0.3, ge=0, le=1, description="largest share of paragraphs repeating an earlier one (Gopher: 0.3)")
    max_duplicate_paragraph_char_fraction: float | None = Field(
        0.2, ge=0, le=1, description="largest share of characters in repeated paragraphs (Gopher: 0.2)")
    max_top_ngram_fraction: dict[int, float] | None = Field(
        default_factory=lambda: dict(TOP_NGRAM_LIMITS),
        description="n -> largest character share of the most frequent word n-gram (Gopher's values)")
    max_duplicate_ngram_fraction: dict[int, float] | None = Field(
        default_factory=lambda: dict(DUP_NGRAM_LIMITS),
        description="n -> largest character share of word n-grams repeating earlier ones (Gopher: 0.15 … 0.10, "
                    "which rejects ~13% of ShareGPT answers with parallel list items; these reject ~3%)")
    prose_only: bool = Field(
        True, description="the web-text rules (mean_word_length, symbol_ratio, non_alpha_ratio, the n-gram rules) "
                          "read the prose only: code, formulas, tables and markup left out (curation.prose), so "
                          "math and code are not junk; false: the whole text, as Gopher")
    ngram_min_words: int = Field(50, ge=0, description="the n-gram rules apply to texts (prose) of at least this many words")
    ratio_min_words: int = Field(
        10, ge=0, description="symbol_ratio and non_alpha_ratio (and, on prose, mean_word_length) apply to texts "
                              "of at least this many words (one ellipsis in a five-word quote is not junk)")
    require_assistant: bool = Field(True, description="reject conversations without an assistant turn (no_assistant_turn)")
    require_user_first: bool = Field(True, description="reject conversations whose first non-system turn is not the user's")
    reject_empty_turns: bool = Field(True, description="reject conversations with a blank turn (empty_turn)")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        description="case-insensitive regexes; an assistant turn opening with one is a refusal ([] switches the rule off)")
    refusal_window: int = Field(REFUSAL_WINDOW, ge=1, description="characters at the start of each assistant turn searched for refusals")
    boilerplate_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE),
        description="case-insensitive regexes; an assistant turn containing one anywhere is boilerplate ([] switches it off)")
    batch_size: int = Field(20_000, ge=1, description="rows measured at once (bounds memory of the n-gram statistics)")


def _is_blank(e: pl.Expr) -> pl.Expr:
    return e.fill_null("").str.strip_chars() == ""


def _turn_match(patterns: list[str], window: int | None) -> pl.Expr:
    def on(e: pl.Expr) -> pl.Expr:
        e = e.fill_null("")
        e = e.str.slice(0, window) if window else e
        # one search per pattern, not one alternation: an anchored member such as `^\W*network error\W*$`
        # costs the Rust regex its literal prefilter for the whole alternation (~20x slower on ShareGPT)
        return pl.any_horizontal([e.str.contains(any_of([p])) for p in patterns])

    in_turns = (pl.col("messages").list.eval(
        (pl.element().struct.field("role") == "assistant") & on(pl.element().struct.field("content")))
        .list.any())
    return pl.when(pl.col("messages").list.len() > 0).then(in_turns).otherwise(on(pl.col("text")))


def _dup_fractions(units: pl.DataFrame, text: pl.Expr, sep: str) -> pl.DataFrame:
    """Per row of `units`: (share of its pieces split on `sep` that repeat an earlier piece, share of the
    pieces' characters in those), blank pieces left out. One exploded frame, not `list.eval`s over the
    pieces (2.5x cheaper)."""
    pieces = (units.select(pl.int_range(pl.len()).alias("__i"), text.str.split(sep).alias("__x")).explode("__x")
              .with_columns(pl.col("__x").str.strip_chars()).filter(pl.col("__x") != ""))
    pieces = pieces.with_columns(pl.col("__x").str.len_chars().alias("__c"),
                                 (~pl.struct("__i", "__x").is_first_distinct()).alias("__r"))
    per = pieces.group_by("__i").agg(pl.len().alias("n"), pl.col("__r").sum().alias("r"), pl.col("__c").sum().alias("c"),
                                     pl.col("__c").filter(pl.col("__r")).sum().alias("rc"))
    every = pl.DataFrame({"__i": pl.int_range(len(units), eager=True)})
    c = pl.col
    return (every.join(per, on="__i", how="left", maintain_order="left").fill_null(0)
            .select(pl.when(c("n") > 0).then(c("r") / c("n")).otherwise(0.0),
                    pl.when(c("c") > 0).then(c("rc") / c("c")).otherwise(0.0)))


def _measures(df: pl.DataFrame, opts: HeuristicsOptions) -> pl.DataFrame:
    """Per-row measurements the rules compare with their thresholds (columns prefixed `__`)."""
    text = answer_text_expr() if opts.apply_to == "answer" else pl.col("text")
    m = df.select(text.fill_null("").alias("__t"), pl.col("messages"), pl.col("text"))
    m = m.with_columns(_web_text(pl.col("__t"), opts).alias("__p"))
    # prose_only: a word holds a letter, and numbers and operators count neither as words nor as junk
    word, uncounted = (WORD, NUMBER_OR_OPERATOR) if opts.prose_only else (GOPHER_WORD, None)
    junk = ~pl.element().str.contains(r"\p{L}")
    if uncounted:
        junk = junk & ~pl.element().str.contains(uncounted)
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    first_turn = roles.list.eval(pl.element().filter(pl.element() != "system")).list.first()
    prose_words, prose_word_chars = _count_tokens(pl.col("__p"), word)
    cols = [
        _count_tokens(pl.col("__t"), GOPHER_WORD)[0].alias("__words"),
        _count_tokens(pl.col("__p"), None)[0].alias("__prose_tokens"),
        prose_words.alias("__prose_words"),
        (prose_word_chars / prose_words).fill_nan(0.0).fill_null(0.0).alias("__mean_len"),
        (pl.col("__p").str.count_matches("#", literal=True) + pl.col("__p").str.count_matches(r"\.\.\.|…"))
        .alias("__symbols"),
        _tokens(pl.col("__p")).list.eval(junk.cast(pl.Int64)).list.sum().alias("__non_alpha"),
        (pl.col("messages").list.len() > 0).alias("__conv"),
        pl.col("messages").list.eval(_is_blank(pl.element().struct.field("content"))).list.any().fill_null(False)
        .alias("__empty_turn"),
        roles.list.contains("assistant").fill_null(False).alias("__has_assistant"),
        (first_turn.fill_null("") == "user").alias("__user_first"),
    ]
    if opts.refusal_patterns:
        cols.append(_turn_match(opts.refusal_patterns, opts.refusal_window).alias("__refusal"))
    if opts.boilerplate_patterns:
        cols.append(_turn_match(opts.boilerplate_patterns, None).alias("__boilerplate"))
    m = _with_columns(m, cols)
    return pl.concat([m, _repetition_flags(df, opts)], how="horizontal")


def _count_tokens(text: pl.Expr, holding: str | None) -> tuple[pl.Expr, pl.Expr]:
    """(whitespace tokens holding a character of the class `holding` (all tokens if None), their characters).

    One regex count, not a split and a per-token filter (3x cheaper): a token holding such a character
    matches from its first character, so the leftmost matches are exactly those tokens."""
    token = r"\S+" if holding is None else rf"\S*[{holding}&&\S]\S*"  # the class may hold whitespace
    count = text.str.count_matches(token)
    return count, (text.str.len_chars() - text.str.replace_all(token, "").str.len_chars()).cast(pl.Float64)


def _with_columns(df: pl.DataFrame, cols: list[pl.Expr]) -> pl.DataFrame:
    """`df.with_columns(cols)` through the lazy engine, whose common-subexpression elimination computes a
    shared part once: eagerly, `fill_nan` (a when/then over its input) and the four uses of one split in
    `_dup_fractions` each re-ran their regexes (3x the CPU of the rules' measures)."""
    return df.lazy().with_columns(cols).collect()


def _tokens(text: pl.Expr) -> pl.Expr:
    return fold_whitespace(text).str.split(" ").list.eval(
        pl.element().filter(pl.element() != ""))


def _web_text(text: pl.Expr, opts: HeuristicsOptions) -> pl.Expr:
    """What the web-text rules read: the prose (curation.prose), or the whole text with prose_only off."""
    return prose_expr(text) if opts.prose_only else text


def _visible_chars(text: pl.Expr) -> pl.Expr:
    """Characters that are not whitespace (what Gopher's n-gram fractions are shares of)."""
    return (text.str.len_chars() - text.str.count_matches(r"\s")).cast(pl.Float64)


def _units(opts: HeuristicsOptions) -> pl.Expr:
    """The texts repetition is measured on: each assistant turn (plain rows: the text)."""
    if opts.apply_to == "text":
        return pl.concat_list(pl.col("text").fill_null(""))
    turns = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("content"))
    return pl.when(pl.col("messages").list.len() > 0).then(turns).otherwise(pl.concat_list(pl.col("text").fill_null("")))


def _repetition_flags(df: pl.DataFrame, opts: HeuristicsOptions) -> pl.DataFrame:
    """Per row: does any of its units break a repetition rule? (Columns named after the rules.)

    Measured per assistant turn, not on the joined answer: a conversation that revises the same
    code over several turns repeats itself across turns legitimately.
    """
    units = (df.select(pl.int_range(pl.len()).alias("__row"), _units(opts).alias("__u"))
             .explode("__u").with_columns(pl.col("__u").fill_null("")))
    # Repeated lines and paragraphs read the whole turn (a repeated code block is a repeat too). The
    # n-gram rules count repeats in the prose only (code and formulas repeat their n-grams by design),
    # as a share of the whole turn's characters: prose between code blocks is not judged on its own.
    units = units.with_columns(_web_text(pl.col("__u"), opts).alias("__p"))
    units = _with_columns(units, [(_visible_chars(pl.col("__p")) / _visible_chars(pl.col("__u")))
                                  .fill_nan(0.0).fill_null(0.0).alias("__share")])
    lines = _dup_fractions(units, pl.col("__u"), "\n")
    paragraphs = _dup_fractions(units, pl.col("__u").str.replace_all(r"\n[ \t]*\n\s*", "\u0000"), "\u0000")
    units = units.with_columns(lines.to_series(0).alias("__line_frac"), lines.to_series(1).alias("__line_chars"),
                               paragraphs.to_series(0).alias("__para_frac"), paragraphs.to_series(1).alias("__para_chars"))
    top = opts.max_top_ngram_fraction or {}
    dup = opts.max_duplicate_ngram_fraction or {}
    units = units.with_columns(pl.int_range(pl.len()).alias("__uid"),
                               (pl.col("__p").str.count_matches(r"\S+") >= opts.ngram_min_words).alias("__long"))
    # n-gram statistics only where the n-gram rules apply (the costly part)
    long_units = units.filter("__long")
    stats = repetition_stats(long_units["__p"], tuple(sorted(top)), tuple(sorted(dup)))
    measured = units.join(pl.concat([long_units.select("__uid"), stats], how="horizontal"), on="__uid",
                          how="left", maintain_order="left")
    long_enough = pl.col("__long")
    flags = measured.lazy().select(
        "__row",
        (_over(pl.col("__line_frac"), opts.max_duplicate_line_fraction)
         | _over(pl.col("__line_chars"), opts.max_duplicate_line_char_fraction)).alias("__repeated_lines"),
        (_over(pl.col("__para_frac"), opts.max_duplicate_paragraph_fraction)
         | _over(pl.col("__para_chars"), opts.max_duplicate_paragraph_char_fraction)).alias("__repeated_paragraphs"),
        (long_enough & pl.any_horizontal(
            [pl.lit(False)] + [pl.col(f"top_{n}") * pl.col("__share") > t for n, t in top.items()]))
        .alias("__top_ngram"),
        (long_enough & pl.any_horizontal(
            [pl.lit(False)] + [pl.col(f"dup_{n}") * pl.col("__share") > t for n, t in dup.items()]))
        .alias("__dup_ngram"),
    ).collect()
    per_row = flags.group_by("__row").agg(pl.exclude("__row").fill_null(False).any())
    return (pl.DataFrame({"__row": pl.int_range(len(df), eager=True)})
            .join(per_row, on="__row", how="left", maintain_order="left").drop("__row").fill_null(False))


def _rules(opts: HeuristicsOptions) -> list[tuple[str, pl.Expr]]:
    """(reason, failing-condition) in reporting order."""
    c = pl.col
    conv = c("__conv")
    rules: list[tuple[str, pl.Expr]] = []
    if opts.reject_empty_turns:
        rules.append(("empty_turn", conv & c("__empty_turn")))
    if opts.require_assistant:
        rules.append(("no_assistant_turn", conv & ~c("__has_assistant")))
    if opts.require_user_first:
        rules.append(("not_user_first", conv & ~c("__user_first")))
    if opts.refusal_patterns:
        rules.append(("refusal", conv & c("__refusal")))
    if opts.boilerplate_patterns:
        rules.append(("boilerplate", c("__boilerplate")))
    if opts.min_words is not None:
        rules.append(("too_few_words", c("__words") < opts.min_words))
    if opts.max_words is not None:
        rules.append(("too_many_words", c("__words") > opts.max_words))
    enough = c("__prose_words") >= opts.ratio_min_words
    if opts.min_mean_word_length is not None or opts.max_mean_word_length is not None:
        lo = opts.min_mean_word_length if opts.min_mean_word_length is not None else 0.0
        hi = opts.max_mean_word_length if opts.max_mean_word_length is not None else float("inf")
        # on prose, a few words left between code blocks say nothing about their mean length
        measured = enough if opts.prose_only else c("__prose_words") > 0
        rules.append(("mean_word_length", measured & ((c("__mean_len") < lo) | (c("__mean_len") > hi))))
    if opts.max_symbol_ratio is not None:
        rules.append(("symbol_ratio", enough & (c("__symbols") > opts.max_symbol_ratio * c("__prose_words"))))
    if opts.max_non_alpha_ratio is not None:
        rules.append(("non_alpha_ratio", enough & (c("__non_alpha") > opts.max_non_alpha_ratio * c("__prose_tokens"))))
    rules.append(("repeated_lines", c("__repeated_lines")))
    rules.append(("repeated_paragraphs", c("__repeated_paragraphs")))
    rules.append(("top_ngram_fraction", c("__top_ngram")))
    rules.append(("duplicate_ngram_fraction", c("__dup_ngram")))
    return rules


def _over(value: pl.Expr, limit: float | None) -> pl.Expr:
    return pl.lit(False) if limit is None else value > limit


def failed_rules(df: pl.DataFrame, opts: HeuristicsOptions, ctx: StepContext | None = None) -> pl.DataFrame:
    """One boolean column per rule (True = the row fails it), in reporting order."""
    parts = []
    starts = range(0, max(len(df), 1), opts.batch_size)
    for s in (ctx.track(starts, "heuristics", total=len(starts)) if ctx else starts):
        m = _measures(df.slice(s, opts.batch_size), opts)
        parts.append(m.select([cond.fill_null(False).alias(name) for name, cond in _rules(opts)]))
    return pl.concat(parts) if parts else pl.DataFrame()


def heuristics(df: pl.DataFrame, opts: HeuristicsOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    fails = failed_rules(df, opts, ctx)
    names = fails.columns
    reason = pl.coalesce([pl.when(pl.col(n)).then(pl.lit(n)) for n in names]) if names else pl.lit(None, pl.Utf8)
    listed = (pl.concat_list([pl.when(pl.col(n)).then(pl.lit(n)) for n in names]).list.drop_nulls()
              if names else pl.lit([], dtype=pl.List(pl.Utf8)))
    verdict = fails.select(reason.alias("reason"), listed.alias("failed_rules"))
    marked = pl.concat([df, verdict], how="horizontal")
    is_kept = pl.col("reason").is_null()
    kept = marked.filter(is_kept).drop("reason", "failed_rules")
    rejected = reject(marked.filter(~is_kept).drop("reason"), STAGE, pl.col("failed_rules").list.first())
    ctx.stats["by_reason"] = {k: v for k, v in rejected["reason"].value_counts(sort=True).iter_rows()} if len(rejected) else {}
    ctx.stats["rule_hits"] = {n: int(fails[n].sum()) for n in names}
    return kept, rejected
