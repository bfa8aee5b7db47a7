"""Row helpers shared by the generators and the judge: prompts out of records, new records in."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation.records import (MESSAGES, SYNTHETIC_PREFIX, content_id, first_user_prompt, last_assistant_answer,
                              render_text)
from curation.step import reject

SEED_IDS = "seed_ids"
CANDIDATE_OF = "candidate_of"  # the edge case a row answers (judge_picks: several rows a case, the judge picks)
EDGE_KIND = "edge_kind"  # which kind of edge case a synthetic row is (synthesis/edge_kinds.py)
NEW_ROW_SCHEMA = {"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8,
                  SEED_IDS: pl.List(pl.Utf8)}


def row_prompt(row: dict) -> str:
    """The instruction of a row: its first user turn, or the document for plain-text rows."""
    msgs = row.get("messages") or []
    return first_user_prompt(msgs) if msgs else (row.get("text") or "")


def row_answer(row: dict) -> str:
    msgs = row.get("messages") or []
    return last_assistant_answer(msgs) if msgs else (row.get("text") or "")


def first_answer(row: dict) -> str:
    """The answer to the row's first prompt: the assistant turn right after its first user turn ('' if none)."""
    msgs = row.get("messages") or []
    first = next((i for i, m in enumerate(msgs) if m["role"] == "user"), None)
    if first is None or first + 1 >= len(msgs) or msgs[first + 1]["role"] != "assistant":
        return ""
    return msgs[first + 1]["content"] or ""


def context_for_answer(messages: list[dict]) -> list[dict]:
    """The conversation up to and including its last user turn (what a new answer replies to)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]


def clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@dataclass
class Draft:
    """One attempted new row, from its prompt to its answer (or the reason it failed)."""

    slot: int
    context: list[dict]  # the messages the answer replies to (ends with a user turn)
    seed_ids: list[str]
    error: str | None = None
    answer: str | None = None
    origin: int | None = None  # respond: position of the row being re-answered
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.context[-1]["content"] if self.context else ""

    def messages(self) -> list[dict]:
        if self.answer is None:
            return list(self.context)
        return [*self.context, {"role": "assistant", "content": self.answer}]


def with_seed_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Real rows get an empty `seed_ids` list (rows from an earlier generator keep theirs)."""
    if SEED_IDS in df.columns:
        return df
    return df.with_columns(pl.Series(SEED_IDS, [[] for _ in range(len(df))], dtype=pl.List(pl.Utf8)))


def drafts_frame(drafts: list[Draft], generator: str, originals: pl.DataFrame | None = None) -> pl.DataFrame:
    """Canonical records for drafts; with `originals` (respond) each row keeps its source row's
    user columns and only the record columns change."""
    recs = []
    for d in drafts:
        msgs = d.messages()
        text = render_text(msgs)
        recs.append({"id": content_id("syn-", f"{generator}\x00{d.slot}\x00{text}"), "messages": msgs,
                     "text": text, "source": SYNTHETIC_PREFIX + generator, SEED_IDS: d.seed_ids})
    new = pl.DataFrame(recs, schema=NEW_ROW_SCHEMA)
    if originals is None:
        return new
    base = originals[[d.origin for d in drafts]] if drafts else originals.head(0)
    return base.with_columns(new.get_columns())


def split_drafts(drafts: list[Draft], generator: str, stage: str,
                 originals: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    ok = [d for d in drafts if d.error is None]
    bad = [d for d in drafts if d.error is not None]
    kept = drafts_frame(ok, generator, originals)
    rejected = drafts_frame(bad, generator, originals)
    rejected = reject(rejected, stage, pl.Series([d.error for d in bad], dtype=pl.Utf8))
    return kept, rejected


def concat_like(template: pl.DataFrame, frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Stack frames, filling missing columns with nulls, in the template's column order first."""
    out = pl.concat([template.head(0), *frames], how="diagonal_relaxed")
    return out
