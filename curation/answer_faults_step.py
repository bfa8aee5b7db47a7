"""The `answer_faults` step: conversations whose answer a reader would not keep, each with a named reason.

Reads the *last* assistant turn and the user turn before it (its prompt). Earlier answers are context:
in real chats a cut-off answer followed by "continue" is how the user got the rest, and it is the last
answer that ends the row. Rules, in reporting order (curation.answer_faults holds each one):
  last_turn_user     the conversation ends on the user's turn (nothing answers it)
  mid_conversation   its first message points back to turns the row does not hold ("continue", "Remove 3
                     and 4", "your five points", "Rewrite the following script" with no script);
                     `detail` holds the words
  truncated          the last answer stops partway (open code fence, unfinished table row, empty list
                     item, a colon announcing nothing, a trailing fragment); `detail` says which
  repeats_prompt     most of the last answer's word 3-grams are its prompt's
  language_mismatch  the last answer is confidently in another language than its prompt (and the prompt
                     asks for no translation); `detail` is "prompt -> answer", e.g. "en -> fr"
Plain-text rows (empty `messages`) pass. Refusals, boilerplate, empty turns and repetition are
`heuristics`' rules; this step does not count them twice.
"""
from __future__ import annotations

import polars as pl
from pydantic import Field

from curation import answer_faults as faults
from curation.step import StepContext, StepOptions, reject

STAGE = "answer_faults"
RULES = ("last_turn_user", "mid_conversation", "truncated", "repeats_prompt", "language_mismatch")


class AnswerFaultsOptions(StepOptions):
    last_turn_user: bool = Field(True, description="reject conversations whose last turn is the user's")
    mid_conversation: bool = Field(True, description="reject conversations whose first message points back to "
                                                      "turns the row does not hold (detail: the words)")
    truncated: bool = Field(True, description="reject a last answer that stops partway (detail: how)")
    repeats_prompt: float | None = Field(
        0.8, gt=0, le=1, description="reject a last answer when this share of its word 3-grams is in its prompt "
                                     "(null: off)")
    language_mismatch: bool = Field(
        True, description="reject a last answer in another language than its prompt (langid, both confident)")


def _last_exchange(messages: list[dict]) -> tuple[str, str | None]:
    """(the prompt of the last answer, the last answer); (.., None) without an answer."""
    turns = [m for m in messages if m.get("role") != "system"]
    at = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].get("role") == "assistant"), None)
    if at is None:
        return "", None
    prompt = next((turns[i].get("content") or "" for i in range(at - 1, -1, -1) if turns[i].get("role") == "user"), "")
    return prompt, turns[at].get("content") or ""


def row_faults(messages: list[dict], opts: AnswerFaultsOptions) -> list[tuple[str, str]]:
    """(rule, detail) for each rule the conversation fails, in reporting order."""
    found: list[tuple[str, str]] = []
    if not messages:
        return found
    if opts.last_turn_user and faults.ends_with_user(messages):
        found.append(("last_turn_user", ""))
    if opts.mid_conversation and (words := faults.starts_mid_conversation(messages)):
        found.append(("mid_conversation", words))
    prompt, answer = _last_exchange(messages)
    if answer is None or faults.empty(answer):
        return found  # no answer to judge: heuristics' no_assistant_turn / empty_turn
    if opts.truncated and (how := faults.truncated(answer)):
        found.append(("truncated", how))
    if opts.repeats_prompt is not None and prompt and faults.repeats_prompt(prompt, answer, opts.repeats_prompt):
        found.append(("repeats_prompt", ""))
    if opts.language_mismatch and prompt and (langs := faults.language_mismatch(prompt, answer)):
        found.append(("language_mismatch", f"{langs[0]} -> {langs[1]}"))
    return found


def answer_faults(df: pl.DataFrame, opts: AnswerFaultsOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows failing a rule are rejected with the first as `reason` (its `detail`, all in `failed_rules`)."""
    found = [row_faults(m, opts) for m in ctx.track(df["messages"].to_list(), STAGE, total=len(df))]
    verdict = pl.DataFrame({
        "__failed": [[rule for rule, _ in f] for f in found],
        "__detail": [f[0][1] if f else None for f in found],
    }, schema={"__failed": pl.List(pl.Utf8), "__detail": pl.Utf8})
    marked = pl.concat([df, verdict], how="horizontal")
    failed = pl.col("__failed").list.len() > 0
    kept = marked.filter(~failed).drop("__failed", "__detail")
    rejected = reject(marked.filter(failed), STAGE, pl.col("__failed").list.first(),
                      detail=pl.col("__detail"), failed_rules=pl.col("__failed")).drop("__failed", "__detail")
    ctx.stats["by_reason"] = dict(rejected["reason"].value_counts(sort=True).iter_rows()) if len(rejected) else {}
    ctx.stats["rule_hits"] = {rule: sum(any(r == rule for r, _ in f) for f in found) for rule in RULES}
    return kept, rejected
