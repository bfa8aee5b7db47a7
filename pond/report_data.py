"""What `report.html` shows, read from a run folder: plain data, no HTML.

Every reader returns None (or an empty list) when its part is not in the run (no training, no
synthetic rows, an unfinished step, an old run from before a file existed), so the report of any
run folder, finished or not, says "not in this run" for that part instead of failing. Paths come
from pond.layout, as for `pond inspect`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.records import synthetic_source
from pond import layout
from pond.steps import STEPS

EXAMPLE_CHARS = 300
TRAIN_RESULT = "train-result.json"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
CARD = "README.md"


def clip(text: Any, limit: int = EXAMPLE_CHARS) -> str:
    """One line of at most `limit` characters (whitespace collapsed), for an example cell."""
    s = " ".join(str(text if text is not None else "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _scan(path: Path) -> pl.LazyFrame | None:
    """A step output (a Parquet file, or the ray executor's folder of shards), or None if absent."""
    if path.is_file() or (path.is_dir() and any(path.glob("*.parquet"))):
        return pl.scan_parquet(path if path.is_file() else path / "*.parquet")
    return None


def _columns(lf: pl.LazyFrame | None) -> list[str]:
    return [] if lf is None else list(lf.collect_schema().names())


# --------------------------------------------------------------------------- funnel and reasons


def funnel(run: Path) -> list[dict[str, Any]]:
    """Per step folder: name, status, rows in / kept / rejected (None where its stats.json is missing)."""
    return [{"step": r["step"], "status": r["status"], "in": r.get("in"), "kept": r.get("out"),
             "rejected": r.get("rejected"), "seconds": r.get("seconds")} for r in layout.funnel(run)]


def reasons(run: Path, top: int = 5, examples: int = 3) -> list[dict[str, Any]]:
    """Per step with rejections: its top reasons (tag, rows) with up to `examples` real rejected rows each
    (id, the full reason, its detail, the text clipped)."""
    out = []
    for d in layout.step_dirs(run):
        lf = _scan(d / layout.REJECTED)
        if lf is None or "reason" not in _columns(lf):
            continue
        cols = _columns(lf)
        counts = layout.reason_counts(lf.select("reason").collect(), top)
        entries = []
        for tag, n in counts.items():
            pick = [c for c in ("id", "reason", "detail", "text") if c in cols]
            rows = lf.filter(layout.reason_tag() == tag).select(pick).head(examples).collect().to_dicts()
            entries.append({"reason": tag, "rows": n,
                            "examples": [{"id": r.get("id", ""), "reason": clip(r.get("reason"), 120),
                                          "detail": clip(r.get("detail"), 120), "text": clip(r.get("text"))}
                                         for r in rows]})
        if entries:
            out.append({"step": d.name, "reasons": entries})
    return out


# --------------------------------------------------------------------------- scores


def step_score_columns(kind: str | None, options: dict[str, Any]) -> list[str]:
    """The columns a step wrote its scores to: its options' `score_columns()`, from the options its
    stats.json recorded; none for a step that scores nothing or a kind the step table lacks."""
    if kind not in STEPS:
        return []
    model = STEPS[kind].options_model()
    if not hasattr(model, "score_columns"):
        return []
    # not validated again: the recorded options were valid when the step ran (an older run's may not
    # be now); missing ones take their defaults
    return model.model_construct(**options).score_columns()


def score_columns(run: Path) -> list[dict[str, Any]]:
    """Every score column a step of the run wrote: the step, the column, and its values on the rows the step
    scored (numpy arrays), split into the rows it kept and the rows it (or its threshold) rejected."""
    out = []
    for d, stats in zip(layout.step_dirs(run), layout.funnel(run), strict=True):
        columns = step_score_columns(stats.get("kind"), stats.get("options") or {})
        if not columns:
            continue
        kept, rejected = _scan(d / layout.KEPT), _scan(d / layout.REJECTED)
        for col in columns:
            values = {}
            for name, lf in (("kept", kept), ("rejected", rejected)):
                if col in _columns(lf):
                    s = lf.select(pl.col(col).cast(pl.Float64)).collect().to_series().drop_nulls().drop_nans()
                    values[name] = s.to_numpy()
            if any(len(v) for v in values.values()):
                out.append({"step": d.name, "column": col,
                            **{k: values.get(k, np.zeros(0)) for k in ("kept", "rejected")}})
    return out


# --------------------------------------------------------------------------- synthetic against real


def final_rows(run: Path) -> tuple[pl.LazyFrame | None, str]:
    """The run's final set (curated.parquet), or the last finished step's kept rows of a run that has none,
    as a scan: a report that needs a few columns reads only those."""
    lf = _scan(Path(run) / layout.CURATED)
    if lf is not None:
        return lf, layout.CURATED
    for d in reversed(layout.step_dirs(run)):
        if (d / layout.DONE).exists() and (lf := _scan(d / layout.KEPT)) is not None:
            return lf, f"{d.name}/{layout.KEPT} (the run has no {layout.CURATED} yet)"
    return None, ""


def _turn(role: str, which: str) -> pl.Expr:
    contents = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == role).struct.field("content"))
    return getattr(contents.list, which)()


def profile(df: pl.DataFrame) -> pl.DataFrame:
    """Per row: synthetic or real, prompt and answer length in characters (first user turn, last assistant
    turn; a plain-text row's text is its answer), and turns."""
    has_messages = "messages" in df.columns
    prompt = _turn("user", "first").fill_null("").str.len_chars() if has_messages else pl.lit(0)
    answer = (_turn("assistant", "last").fill_null(pl.col("text")) if has_messages else pl.col("text"))
    turns = pl.col("messages").list.len() if has_messages else pl.lit(0)
    source = pl.col("source") if "source" in df.columns else pl.lit("")
    return df.select(synthetic_source(source).alias("synthetic"),
                     prompt.alias("prompt_chars"), answer.fill_null("").str.len_chars().alias("answer_chars"),
                     turns.alias("turns"))


def synthetic_vs_real(run: Path, score_names: list[str], examples: int = 3) -> dict[str, Any] | None:
    """Lengths and scores of the synthetic rows against the real rows of the final set; None without
    synthetic rows."""
    lf, where = final_rows(run)
    if lf is None or "source" not in lf.collect_schema().names():
        return None
    # most runs have no synthetic row: found from `source` alone, before the texts are read
    if not lf.select(synthetic_source(pl.col("source")).any()).collect().item():
        return None
    df = lf.collect()
    prof = profile(df)
    groups = {}
    for label, mask in (("real", ~prof["synthetic"]), ("synthetic", prof["synthetic"])):
        p, rows = prof.filter(mask), df.filter(mask)
        scores = {c: rows[c].cast(pl.Float64).drop_nulls().mean() for c in score_names if c in rows.columns}
        groups[label] = {"rows": p.height, **{k: p[k].to_numpy() for k in ("prompt_chars", "answer_chars")},
                         "means": {k: p[k].mean() for k in ("prompt_chars", "answer_chars", "turns")},
                         "scores": {c: v for c, v in scores.items() if v is not None}}
    synthetic = df.filter(prof["synthetic"]).head(examples)
    return {"where": where, "groups": groups,
            "examples": [{"id": r["id"], "source": r["source"], "text": clip(r.get("text"))}
                         for r in synthetic.to_dicts()]}


# --------------------------------------------------------------------------- training


def _last_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in (folder / CHECKPOINTS).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / TRAINER_STATE).is_file()]
    return max(found)[1] if found else None


def training_curve(folder: Path) -> dict[str, Any] | None:
    """The trainer's log of a training folder (train-result.json once finished, else its last checkpoint's
    trainer_state.json): training loss and held-out loss by step; None if it never trained."""
    folder = Path(folder)
    history, where = layout.read_json(folder / TRAIN_RESULT).get("log_history"), TRAIN_RESULT
    if history is None and (ckpt := _last_checkpoint(folder)) is not None:
        history = layout.read_json(ckpt / TRAINER_STATE).get("log_history")
        where = f"{CHECKPOINTS}/{ckpt.name}/{TRAINER_STATE} (training unfinished)"
    if not history:
        return None
    loss = [(e["step"], e["loss"]) for e in history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e and "step" in e]
    if not loss and not evals:
        return None
    return {"where": where, "loss": loss, "eval_loss": evals}


def adapter_card(run: Path) -> tuple[str, str] | None:
    """(where, markdown) of the trained adapter's card (adapter/README.md, or model/ for method full)."""
    for folder in (layout.ADAPTER, "model"):
        card = Path(run) / folder / CARD
        if card.is_file():
            return f"{folder}/{CARD}", card.read_text(encoding="utf-8", errors="replace")
    return None


# --------------------------------------------------------------------------- experiment and evaluation


def experiment(run: Path) -> dict[str, Any] | None:
    """experiment/experiment.json (evaluation.report.aggregate's summary) with each arm x seed's training
    curve; None without one."""
    folder = Path(run) / layout.EXPERIMENT
    summary = layout.read_json(folder / "experiment.json")
    if not summary.get("arms"):
        return None
    curves = {}
    for arm in summary["arms"]:
        for s in arm.get("seeds", []):
            curve = training_curve(folder / "arms" / arm["name"] / f"seed-{s['seed']}")
            if curve:
                curves[f"{arm['name']} seed {s['seed']}"] = curve
    return {"summary": summary, "curves": curves}


def evaluation_report(run: Path) -> str | None:
    """The held-out evaluation's report.md (written when the recipe has `evaluate:`)."""
    path = Path(run) / layout.REPORT
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def manifest(run: Path) -> dict[str, Any]:
    return layout.read_json(Path(run) / layout.MANIFEST)


def run_json(run: Path) -> str:
    """The manifest's lineage figures as indented JSON, for the report's last section."""
    m = manifest(run)
    keep = {k: m[k] for k in ("pond_version", "recipe", "recipe_hash", "seed", "inputs", "hardware", "dtypes",
                              "plan", "timings") if k in m}
    return json.dumps(keep, indent=1, sort_keys=True, default=str) if keep else ""
