"""`pond inspect RUN`: what a run did — a funnel of counts, rejection reasons, teacher cost, adapter.

It reads the run folder through pond.layout, as the pipeline's summary does."""
from __future__ import annotations

from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from pond.layout import (ADAPTER, CURATED, EVAL, MANIFEST, REJECTED, REPORT, REPORT_HTML, funnel, is_run, reason_tag,
                         step_dirs)


def find_id(run: Path, row_id: str) -> str:
    """Which step dropped `row_id` and why, or that it survived into curated.parquet."""
    for d in step_dirs(run):
        rejected = d / REJECTED
        if rejected.exists():
            hit = pl.scan_parquet(rejected).filter(pl.col("id") == row_id).select("reason").collect()
            if len(hit):
                return f"{row_id}: rejected by {d.name}: {hit['reason'][0]}"
    curated = run / CURATED
    if curated.exists() and len(pl.scan_parquet(curated).filter(pl.col("id") == row_id).select("id").collect()):
        return f"{row_id}: survived (in {CURATED})"
    return f"{row_id}: not found in this run"


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
