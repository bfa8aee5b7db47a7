"""Score rows by their embedding, write the score to a column, and drop rows below `min_score`.

Two modes:
- `reference`: cosine to a set of gold examples (any file ingest reads): the best match
  (`aggregate: max`) or the cosine to the gold set's mean direction (`aggregate: centroid`).
- `classifier`: the FineWeb-Edu idea. Label a few thousand rows (by hand, or with the judge),
  train a scikit-learn model on their embeddings, then score any number of rows cheaply. A
  `label` column trains a logistic regression (score = probability of the positive label, or the
  expected label for numeric labels with more than two values); a `score` column trains a ridge
  regression (score = prediction). Part of the labelled rows is held out; the held-out balanced
  accuracy (labels) or Pearson correlation (scores) goes into stats.json, and a classifier below
  `min_heldout` is refused with an error instead of silently filtering with noise. The model used
  for scoring is then refit on every labelled row.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curation.embed import EmbeddingOptions, embed_column
from curation.step import StepContext, StepOptions, split

STAGE = "embed_quality"
POSITIVE_WORDS = {"good", "high", "positive", "pos", "yes", "true", "keep", "accept", "accepted", "pass"}


class EmbedQualityOptions(StepOptions):
    mode: Literal["reference", "classifier"] | None = Field(
        None, description="reference (cosine to gold examples) or classifier (trained on a labelled file); "
                          "default: whichever of `reference` / `labelled` is given")
    reference: str | None = Field(None, description="reference mode: file of gold examples (any format ingest reads)")
    aggregate: Literal["max", "centroid"] = Field(
        "max", description="reference mode: cosine to the most similar gold example, or to their mean direction")
    labelled: str | None = Field(None, description="classifier mode: file of rows with a `label` or `score` column")
    label_column: str | None = Field(None, description="classifier mode: the target column; default: `label`, "
                                                        "else `score`")
    positive_label: str | None = Field(
        None, description="classifier mode, categorical labels: the label meaning good (default: the largest "
                          "value for numeric/boolean labels, or a word such as good/high/yes)")
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="classifier mode: labelled rows held out to "
                                                                     "measure the classifier")
    min_heldout: float = Field(0.7, ge=-1.0, le=1.0,
                               description="classifier mode: refuse a classifier whose held-out balanced accuracy "
                                           "(labels) or Pearson r (scores) is below this")
    C: float = Field(1.0, gt=0.0, description="classifier mode: inverse regularisation strength (logistic "
                                              "regression C; ridge alpha = 1/C)")
    score_column: str = Field("quality", description="column the score is written to")
    min_score: float | None = Field(None, description="rows scoring below this are rejected; default: score only")
    column: str = Field("text", description="column embedded")
    seed: int | None = Field(None, description="held-out split seed; default: the run's seed")
    embedding: EmbeddingOptions = Field(default_factory=EmbeddingOptions, description="embedding model settings")

    @model_validator(mode="after")
    def _mode(self):
        if self.mode is None:
            if (self.reference is None) == (self.labelled is None):
                raise ValueError("embed_quality: give `reference` (gold examples) or `labelled` (classifier "
                                 "training file), or set `mode`")
            self.mode = "reference" if self.reference is not None else "classifier"
        if self.mode == "reference" and self.reference is None:
            raise ValueError("embed_quality mode=reference needs `reference`: a file of gold examples")
        if self.mode == "classifier" and self.labelled is None:
            raise ValueError("embed_quality mode=classifier needs `labelled`: a file with a label or score column")
        return self

    def score_columns(self) -> list[str]:
        """The column its score goes to (the report draws its histogram)."""
        return [self.score_column]


def _read(path: str, ctx: StepContext, what: str) -> pl.DataFrame:
    from curation.ingest import read_records

    p = ctx.resolve(path)
    rows, bad = read_records(str(p))
    if len(rows) == 0:
        raise ValueError(f"embed_quality: {what} file {p} has no usable rows ({len(bad)} malformed)")
    return rows


def reference_scores(emb: np.ndarray, ref: np.ndarray, aggregate: str) -> np.ndarray:
    if aggregate == "centroid":
        c = ref.mean(0)
        return emb @ (c / max(np.linalg.norm(c), 1e-12))
    out = np.empty(len(emb), dtype=np.float32)
    for s in range(0, len(emb), 4096):
        out[s:s + 4096] = (emb[s:s + 4096] @ ref.T).max(1)
    return out


def _labels(y: pl.Series, positive: str | None) -> tuple[np.ndarray, Any, list]:
    """Targets as a numpy array, the positive class (None: expected value) and the classes."""
    classes = sorted(y.unique().to_list())
    if len(classes) < 2:
        raise ValueError(f"embed_quality: the labelled file has a single label {classes}; need at least two")
    values = y.to_numpy()
    if positive is not None:
        match = [c for c in classes if str(c) == str(positive)]
        if not match:
            raise ValueError(f"embed_quality: positive_label {positive!r} is not among the labels {classes}")
        return values, match[0], classes
    numeric = y.dtype.is_numeric() or y.dtype == pl.Boolean
    if numeric:
        return values, (classes[-1] if len(classes) == 2 else None), classes
    good = [c for c in classes if str(c).lower() in POSITIVE_WORDS]
    if len(good) != 1:
        raise ValueError(f"embed_quality: cannot tell which label is good among {classes}; set positive_label")
    return values, good[0], classes


def _score_classifier(model, x: np.ndarray, positive) -> np.ndarray:
    proba = model.predict_proba(x)
    if positive is None:  # ordinal numeric labels: expected value
        return proba @ np.asarray(model.classes_, dtype=np.float64)
    return proba[:, list(model.classes_).index(positive)]


def train_classifier(emb: np.ndarray, target: pl.Series, opts: EmbedQualityOptions, seed: int):
    """Fit on a split, measure on the held-out part, refit on all. Returns (score function, figures)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import train_test_split

    # `score` (or a float column under another name) is a regression target; anything else a label
    regression = target.name == "score" or (target.name != "label" and target.dtype.is_float())
    idx = np.arange(len(target))
    if regression:
        y = target.cast(pl.Float64).to_numpy()
        tr, te = train_test_split(idx, test_size=opts.heldout_fraction, random_state=seed)
        make = lambda: Ridge(alpha=1.0 / opts.C)  # noqa: E731
        model = make().fit(emb[tr], y[tr])
        pred = model.predict(emb[te])
        r = float(pearsonr(pred, y[te])[0]) if np.std(pred) > 0 and np.std(y[te]) > 0 else 0.0
        figures = {"kind": "ridge", "metric": "pearson_r", "heldout_score": round(r, 4),
                   "heldout_spearman": round(float(spearmanr(pred, y[te])[0]), 4) if r else 0.0}
        final = make().fit(emb, y)
        scorer = final.predict
    else:
        y, positive, classes = _labels(target, opts.positive_label)
        try:
            tr, te = train_test_split(idx, test_size=opts.heldout_fraction, random_state=seed, stratify=y)
        except ValueError as e:
            raise ValueError(f"embed_quality: cannot hold out {opts.heldout_fraction:.0%} of {len(y)} labelled rows "
                             f"with every label on both sides ({e}); label more rows") from None
        make = lambda: LogisticRegression(C=opts.C, max_iter=2000, class_weight="balanced")  # noqa: E731
        model = make().fit(emb[tr], y[tr])
        pred = model.predict(emb[te])
        figures = {"kind": "logistic_regression", "metric": "balanced_accuracy",
                   "heldout_score": round(float(balanced_accuracy_score(y[te], pred)), 4),
                   "heldout_accuracy": round(float(accuracy_score(y[te], pred)), 4),
                   "classes": [str(c) for c in classes],
                   "positive_label": None if positive is None else str(positive)}
        final = make().fit(emb, y)
        scorer = lambda x: _score_classifier(final, x, positive)  # noqa: E731
    figures.update({"train_rows": len(tr), "heldout_rows": len(te), "min_heldout": opts.min_heldout,
                    "refit_on_all": True})
    return scorer, figures


def embed_quality(df: pl.DataFrame, opts: EmbedQualityOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    seed = ctx.seed if opts.seed is None else opts.seed
    if opts.mode == "reference":
        ref_rows = _read(opts.reference, ctx, "reference")
        ref = embed_column(ref_rows, opts.column, opts.embedding, ctx, "reference")
        scorer = lambda x: reference_scores(x, ref, opts.aggregate)  # noqa: E731
        ctx.stats["reference"] = {"rows": len(ref_rows), "aggregate": opts.aggregate}
    else:
        labelled = _read(opts.labelled, ctx, "labelled")
        col = opts.label_column or next((c for c in ("label", "score") if c in labelled.columns), None)
        if col is None or col not in labelled.columns:
            raise ValueError(f"embed_quality: {opts.labelled} has no {opts.label_column or '`label` or `score`'} "
                             f"column (columns: {labelled.columns})")
        labelled = labelled.filter(pl.col(col).is_not_null())
        if len(labelled) < 10:
            raise ValueError(f"embed_quality: {opts.labelled} has {len(labelled)} labelled rows; need at least 10")
        scorer, figures = train_classifier(embed_column(labelled, opts.column, opts.embedding, ctx, "labelled"),
                                           labelled[col], opts, seed)
        ctx.stats["classifier"] = figures
        if figures["heldout_score"] < opts.min_heldout:
            raise ValueError(
                f"embed_quality: refusing to score with this classifier: held-out {figures['metric']} "
                f"{figures['heldout_score']:.3f} < min_heldout {opts.min_heldout} ({figures['train_rows']} training "
                f"rows, {figures['heldout_rows']} held out from {opts.labelled}); label more or cleaner rows, "
                f"or lower min_heldout")
    scores = np.asarray(scorer(embed_column(df, opts.column, opts.embedding, ctx)), dtype=np.float64) \
        if len(df) else np.zeros(0)
    scored = df.with_columns(pl.Series(opts.score_column, scores, dtype=pl.Float64))
    keep = pl.lit(True) if opts.min_score is None else pl.col(opts.score_column) >= opts.min_score
    kept, rejected = split(scored, keep, STAGE, "low_embed_quality")
    ctx.stats.update({
        "mode": opts.mode, "rows": len(df), "below_min_score": len(rejected),
        "score": {k: round(float(v), 4) for k, v in zip(
            ("min", "p10", "median", "p90", "max"), np.percentile(scores, [0, 10, 50, 90, 100]))} if len(df) else {},
    })
    return kept, rejected
