"""The canonical record: what a row is, how its `text` is rendered and how its id is made.

Every stage reads and writes polars DataFrames with at least these columns:

    id        str    stable: derived from source, position and content
    messages  list[struct{role, content}]   empty for plain-text corpora
    text      str    flat rendering of `messages` (or the document itself)
    source    str    file path or `synthetic:<generator>`

Other columns are carried through untouched.
"""
from __future__ import annotations

import functools
import hashlib

import polars as pl

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})
MESSAGES = pl.List(MESSAGE)
ROLES = ("system", "user", "assistant")
CORE_COLUMNS = ("id", "messages", "text", "source")
# Columns every rejected.parquet has besides the row itself.
REJECT_COLUMNS = ("stage", "reason")

@functools.lru_cache(maxsize=1)
def record_schema():
    """The canonical record frame as a pandera schema (built on first use: importing pandera costs every
    command ~0.5 s, and only checks of records need it)."""
    import pandera.polars as pa

    return pa.DataFrameSchema(
        {
            "id": pa.Column(pl.Utf8, nullable=False, unique=True),
            "messages": pa.Column(MESSAGES, nullable=False),
            "text": pa.Column(pl.Utf8, nullable=False),
            "source": pa.Column(pl.Utf8, nullable=False),
        },
        strict=False,  # user columns ride along
        name="pond record",
    )


def validate_records(df: pl.DataFrame) -> pl.DataFrame:
    """Raise pandera's SchemaError if `df` is not a canonical record frame."""
    return record_schema().validate(df)


def render_text(messages: list[dict]) -> str:
    """Flat rendering used for dedup and embeddings: one `role: content` block per turn."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def make_id(source: str, position: int, text: str) -> str:
    """Stable id from where the row came from and what it says.

    The same file read twice gives the same ids; two identical rows at different positions
    still get different ids, so ids are unique within a run.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(source.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update(str(position).encode())
    h.update(b"\x00")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def content_id(prefix: str, text: str) -> str:
    """Id for rows made by pond itself (synthetic rows): derived from content only."""
    return prefix + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


SYNTHETIC_PREFIX = "synthetic:"  # `source` of a row a generator wrote (DESIGN.md: synthetic:<generator>)


def synthetic_source(source):
    """Whether each `source` (a column expression or a Series) names a generator: `synthetic:<generator>`."""
    return source.cast(pl.Utf8).fill_null("").str.starts_with(SYNTHETIC_PREFIX)


def empty_records() -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def first_user_prompt(messages: list[dict]) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def last_assistant_answer(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")


def answer_text_expr() -> pl.Expr:
    """All assistant content of a row joined (plain text rows: the text itself)."""
    joined = (
        pl.col("messages")
        .list.eval(pl.when(pl.element().struct.field("role") == "assistant").then(pl.element().struct.field("content")))
        .list.drop_nulls()
        .list.join("\n")
    )
    return pl.when(pl.col("messages").list.len() > 0).then(joined).otherwise(pl.col("text"))
