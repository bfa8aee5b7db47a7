"""The synthetic part of `pond inspect`: each judge's calibration, edge cases by kind through synthesize
and the judge, and each batch's synthetic-vs-real report (synthesis/realism.py), read from the steps' stats.json."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from pond.layout import funnel, step_kind
from pond.steps import STEPS


def _is(row: dict, trait: str) -> bool:
    """Whether a step folder's step has this trait of the step table (a kind it no longer has: no)."""
    spec = STEPS.get(row.get("kind") or step_kind(row["step"]))
    return bool(spec is not None and getattr(spec, trait))


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def show_calibration(rows: list[dict], console: Console) -> None:
    """Each judge's calibration (synthesis.calibration): AUC and threshold rejection per corruption."""
    for r in rows:
        cal = r.get("calibration")
        if not _is(r, "teacher_judges_rows") or not cal:
            continue
        verdict = "passed" if (cal.get("worst_auc") or 0) >= cal["min_calibration"] else "refused"
        if (r.get("options") or {}).get("self_judge"):
            verdict += "; SELF-JUDGING: this model also wrote the rows it judges"
        t = Table(title=f"{r['step']}: judge calibration ({cal['judge']}, rubric {cal['rubric']}): {verdict}, worst "
                        f"AUC {_fmt(cal.get('worst_auc'))} (min {cal['min_calibration']}); {cal['positives']} real "
                        f"rows kept at the threshold: {_fmt(cal.get('positives_kept'))}")
        for col in ("corruption", "negatives", "AUC", "mean score", "rejected at min_score"):
            t.add_column(col, justify="left" if col == "corruption" else "right")
        for kind, v in cal["by_corruption"].items():
            t.add_row(kind, str(v["negatives"]), _fmt(v["auc"]), _fmt(v.get("mean")), _fmt(v.get("rejected")))
        console.print(t)


def show_synthetic(run: Path, console: Console) -> None:
    rows = funnel(run)
    show_calibration(rows, console)
    judged: dict[str, dict] = {}
    for r in rows:
        if _is(r, "teacher_judges_rows") and "by_kind" in r:
            for k, v in r["by_kind"].items():
                judged.setdefault(k, v)  # the first judge after the generator
    for r in rows:
        if not _is(r, "teacher_writes_rows") or "by_kind" not in r:
            continue
        t = Table(title=f"{r['step']}: edge cases by kind")
        for col in ("kind", "asked", "valid", "judged", "kept", "top rejection"):
            t.add_column(col, justify="left" if col in ("kind", "top rejection") else "right")
        for kind, v in r["by_kind"].items():
            j = judged.get(kind, {})
            top = next(iter(sorted(v["rejected_by_reason"].items(), key=lambda x: -x[1])), None)
            t.add_row(kind, str(v["asked"]), str(v["valid"]), _fmt(j.get("judged")), _fmt(j.get("kept")),
                      f"{top[0]} {top[1]}" if top else "")
        console.print(t)
        rep = r.get("synthetic_vs_real")
        if rep:
            s = Table(title=f"{r['step']}: synthetic vs real")
            for col in ("figure", "real", "synthetic"):
                s.add_column(col)
            two = rep["embedding_two_sample"]
            s.add_row("rows", str(rep["rows"]["real"]), str(rep["rows"]["synthetic"]))
            s.add_row("embedding two-sample (MMD²)", "", f"{_fmt(two['mmd2'])} (p = {_fmt(two['p_value'])})")
            for key, label in (("nearest_real_cosine", "nearest real row, cosine (median)"),
                               ("prompt_words", "prompt words (median)"), ("answer_words", "answer words (median)")):
                s.add_row(label, *(_fmt((rep[key][side] or {}).get("median")) for side in ("real", "synthetic")))
            s.add_row("diversity (mean pairwise cosine distance)", _fmt(rep["diversity"]["real"]),
                      _fmt(rep["diversity"]["synthetic"]))
            s.add_row("languages", *(", ".join(f"{k} {v:.0%}" for k, v in rep["languages"][side].items())
                                     for side in ("real", "synthetic")))
            console.print(s)
        if "gaps" in r:
            g = Table(title=f"{r['step']}: target gaps, seeded clusters")
            for col in ("cluster", "pool share", "curated share", "cases", "valid", "example"):
                g.add_column(col)
            for c in r["gaps"]["seeded"]:
                g.add_row(str(c["cluster"]), f"{c['pool_share']:.1%}", f"{c['curated_share']:.1%}", str(c["cases"]),
                          str(c.get("valid", "")), c["example"])
            console.print(g)
