"""`pond inspect RUN`: what a run did — a funnel of counts, rejection reasons, teacher cost, adapter.

It reads the run folder through pond.layout, as the pipeline's summary does."""
from __future__ import annotations

from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from pond.layout import (ADAPTER, CURATED, EVAL, KEPT, MANIFEST, REJECTED, REPORT, REPORT_HTML, funnel, generations,
                         is_run, reason_tag, step_dirs)


MAX_TEXT = 2000  # characters of a row's text `--id` prints; the rest is counted, not shown
MAX_HITS = 20  # rows shown for one user id (a user's own ids need not be unique)
USER_ID = "orig_id"  # where ingest keeps a user's own `id` (curation.layouts)


def _matches(path: Path, key: str) -> pl.DataFrame:
    """Rows of one Parquet file whose pond id or user id (`orig_id`, any type, compared as text) is `key`."""
    lazy = pl.scan_parquet(path)
    names = lazy.collect_schema().names()
    hit = pl.col("id") == key
    if USER_ID in names:
        hit = hit | (pl.col(USER_ID).cast(pl.Utf8, strict=False) == key)
    keep = [c for c in ("id", USER_ID, "source", "line", "reason", "detail", "text") if c in names]
    return lazy.filter(hit).select(keep).head(MAX_HITS).collect()


def _places(run: Path) -> list[tuple[str, Path]]:
    """Where a row can be, with what finding it there means: every step's rejected rows (ingest's
    too), then the curated set; a run that has not finished yet: its last step's kept rows."""
    dirs = [d for gen in generations(run) for d in step_dirs(gen)]
    places = [(f"rejected by {_step_label(run, d)}", d / REJECTED) for d in dirs]
    if (run / CURATED).exists():
        places.append((f"survived (in {CURATED})", run / CURATED))
    elif dirs:
        places.append((f"kept so far by {_step_label(run, dirs[-1])} (the run has not finished)", dirs[-1] / KEPT))
    return [(what, p) for what, p in places if p.exists()]


def _step_label(run: Path, step: Path) -> str:
    gen = step.parent.parent
    return step.name if gen == Path(run) else f"drop {gen.name}, {step.name}"


def find_rows(run: Path, key: str) -> list[tuple[str, dict]]:
    """(what happened, the row's stored fields) for every row whose pond id or user id is `key`."""
    found = []
    for what, path in _places(run):
        for row in _matches(path, key).to_dicts():
            found.append((what, row))
            if len(found) >= MAX_HITS:
                return found
    return found


def describe_row(what: str, row: dict) -> str:
    """A found row: its ids, what happened to it and why, where it came from, and its text."""
    ids = row["id"] + (f" (your id {row[USER_ID]})" if row.get(USER_ID) is not None else "")
    lines = [f"{ids}: {what}" + (f": {row['reason']}" if row.get("reason") else "")]
    if row.get("detail"):
        lines.append(f"  detail: {row['detail']}")
    if row.get("source"):
        lines.append(f"  source: {row['source']}" + (f", line {row['line']}" if row.get("line") is not None else ""))
    text = row.get("text") or ""
    more = f"\n  … ({len(text) - MAX_TEXT} more characters)" if len(text) > MAX_TEXT else ""
    lines.append("  text: " + (text[:MAX_TEXT].replace("\n", "\n        ") if text else "(none)") + more)
    return "\n".join(lines)


def find_id(run: Path, key: str) -> str | None:
    """What happened to the row(s) with pond id or user id `key`, or None where there is none."""
    found = find_rows(run, key)
    return "\n".join(describe_row(what, row) for what, row in found) if found else None


def _example(d: Path, reason: str) -> str:
    df = (pl.scan_parquet(d / REJECTED)
          .filter(reason_tag() == reason)
          .select("id", "text").head(1).collect())
    if df.is_empty():
        return ""
    text = " ".join(df["text"][0].split())
    return f"{df['id'][0]}: {text[:90]}{'…' if len(text) > 90 else ''}"


def show(run: Path, console: Console | None = None) -> None:
    console = console or Console()
    if not is_run(run):
        raise FileNotFoundError(f"{run}: not a pond run directory (no steps/)")
    table = Table(title=f"pond run {run}")
    for col in ("step", "in", "kept", "rejected", "seconds", "top reasons"):
        table.add_column(col, justify="right" if col in ("in", "kept", "rejected", "seconds") else "left")
    for r in funnel(run):
        reasons = ", ".join(f"{k} {v}" for k, v in list(r.get("reasons", {}).items())[:3])
        table.add_row(r["step"], str(r.get("in", "")), str(r.get("out", "")), str(r.get("rejected", "")),
                      f"{r.get('seconds', 0):.1f}" if "seconds" in r else "", reasons or r["status"])
    console.print(table)
    examples = Table(title="rejection reasons (one example each)")
    for col in ("step", "reason", "rows", "example"):
        examples.add_column(col)
    for d, r in zip(step_dirs(run), funnel(run)):
        for reason, count in list(r.get("reasons", {}).items())[:5]:
            examples.add_row(d.name, reason, str(count), _example(d, reason))
    if examples.row_count:
        console.print(examples)
    teacher = [r for r in funnel(run) if "teacher" in r]
    if teacher:
        t = Table(title="teacher cost")
        for col in ("step", "requests sent", "cached", "prompt tokens", "completion tokens", "failed"):
            t.add_column(col, justify="right")
        for r in teacher:
            c = r["teacher"]
            t.add_row(r["step"], str(c.get("sent", 0)), str(c.get("cache_hits", 0)), str(c.get("prompt_tokens", 0)),
                      str(c.get("completion_tokens", 0)), str(c.get("failed", 0)))
        console.print(t)
    from pond.inspect_synthetic import show_synthetic

    show_synthetic(run, console)
    card = run / ADAPTER / "README.md"
    if card.exists():
        console.rule("adapter card")
        console.print(card.read_text())
    for name in (EVAL, REPORT, MANIFEST, REPORT_HTML):
        if (run / name).exists():
            console.print(f"{name}: {run / name}")
