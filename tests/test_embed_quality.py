"""embed_quality on real text: reference scores, a trained classifier, and the refusal floor."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from curation.embed import EmbeddingOptions, embed_texts
from curation.embed_quality import EmbedQualityOptions, embed_quality
from curation.step import StepContext

EMB = {"max_seq_length": 128}  # conversations cut shorter: the file stays quick


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "pond-embed-cache"


@pytest.fixture(scope="module")
def convs(sharegpt_df) -> pl.DataFrame:
    """Real conversations about programming (a topic a gold set or a labeller could care about)."""
    code = pl.col("text").str.contains("```|def |function|import ")
    return sharegpt_df.filter((pl.col("messages").list.len() >= 2) & code).head(150)


@pytest.fixture(scope="module")
def fortunes(fortunes_df) -> pl.DataFrame:
    return fortunes_df.sample(150, seed=11)


@pytest.fixture(scope="module")
def pool(convs, fortunes) -> pl.DataFrame:
    """Rows to score: 30 conversations and 30 fortunes never used for training or reference."""
    return pl.concat([convs.tail(30), fortunes.tail(30)], how="diagonal_relaxed").with_columns(
        pl.col("source").str.starts_with("sharegpt").alias("is_conv"))


def _write(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _labelled(convs, fortunes, label_of) -> list[dict]:
    rows = [{"messages": m, **label_of(True, i)} for i, m in enumerate(convs.head(60)["messages"].to_list())]
    rows += [{"text": t, **label_of(False, i)} for i, t in enumerate(fortunes.head(60)["text"].to_list())]
    return rows


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float((pos[:, None] > neg[None, :]).mean())


def _run(df, cache, tmp_path, **opts):
    ctx = StepContext(cache_dir=cache, base_dir=tmp_path, seed=0)
    kept, rejected = embed_quality(df, EmbedQualityOptions(embedding=EMB, **opts), ctx)
    return kept, rejected, ctx.stats


@pytest.fixture(scope="module")
def sports(fortunes_df) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(20 gold rows, 60 rows to score): Debian's `sports` fortunes as the topic a user wants,
    scored rows half more sports fortunes, half fortunes from other files."""
    topic = fortunes_df.filter(pl.col("source") == "sports")
    others = fortunes_df.filter(pl.col("source") != "sports").sample(30, seed=2)
    rows = pl.concat([topic.tail(30), others]).with_columns((pl.col("source") == "sports").alias("on_topic"))
    return topic.head(20), rows


@pytest.mark.parametrize("aggregate", ["max", "centroid"])
def test_reference_scores_are_cosines_to_the_gold_set(sports, cache, tmp_path, aggregate):
    gold, rows = sports
    _write(tmp_path / "gold.jsonl", [{"text": t} for t in gold["text"].to_list()])
    kept, rejected, stats = _run(rows, cache, tmp_path, reference="gold.jsonl", aggregate=aggregate)
    assert len(rejected) == 0 and stats["mode"] == "reference" and stats["reference"]["rows"] == 20
    opts = EmbeddingOptions(**EMB)
    ref = embed_texts(gold["text"].to_list(), opts, cache)
    emb = embed_texts(kept["text"].to_list(), opts, cache)
    if aggregate == "max":
        expected = (emb @ ref.T).max(1)
    else:
        centre = ref.mean(0)
        expected = emb @ (centre / np.linalg.norm(centre))
    np.testing.assert_allclose(kept["quality"].to_numpy(), expected, atol=1e-5)
    # rows on the gold set's topic score higher (measured AUC: max 0.89, centroid 0.87)
    assert _auc(kept["quality"].to_numpy(), kept["on_topic"].to_numpy()) > 0.75


def test_min_score_rejects_below_threshold(sports, cache, tmp_path):
    gold, rows = sports
    _write(tmp_path / "gold.jsonl", [{"text": t} for t in gold["text"].to_list()])
    scored, _, _ = _run(rows, cache, tmp_path, reference="gold.jsonl")
    cut = float(scored["quality"].median())
    kept, rejected, stats = _run(rows, cache, tmp_path, reference="gold.jsonl", min_score=cut, score_column="gold_sim")
    assert len(kept) + len(rejected) == len(rows)
    assert kept["gold_sim"].min() >= cut > rejected["gold_sim"].max()
    assert set(rejected["reason"]) == {"low_embed_quality"} and stats["below_min_score"] == len(rejected)
    assert set(kept.columns) == set(rows.columns) | {"gold_sim"}


def test_classifier_trains_reports_and_scores(convs, fortunes, pool, cache, tmp_path):
    rows = _labelled(convs, fortunes, lambda good, i: {"label": "good" if good else "bad"})
    _write(tmp_path / "labels.jsonl", rows)
    kept, rejected, stats = _run(pool, cache, tmp_path, labelled="labels.jsonl", min_score=0.5)
    clf = stats["classifier"]
    assert clf["metric"] == "balanced_accuracy" and clf["positive_label"] == "good"
    assert clf["heldout_rows"] == 24 and clf["train_rows"] == 96
    assert clf["heldout_score"] >= 0.9
    scores = pl.concat([kept, rejected], how="diagonal_relaxed")
    assert _auc(scores["quality"].to_numpy(), scores["is_conv"].to_numpy()) > 0.9
    assert ((kept["quality"] >= 0.5).all() and (rejected["quality"] < 0.5).all())


def test_classifier_regression_on_a_score_column(convs, fortunes, pool, cache, tmp_path):
    rng = np.random.default_rng(0)
    rows = _labelled(convs, fortunes, lambda good, i: {"score": float(good) * 5 + rng.normal(scale=0.5)})
    _write(tmp_path / "scores.jsonl", rows)
    kept, _, stats = _run(pool, cache, tmp_path, labelled="scores.jsonl")
    assert stats["classifier"]["metric"] == "pearson_r" and stats["classifier"]["heldout_score"] >= 0.8
    assert _auc(kept["quality"].to_numpy(), kept["is_conv"].to_numpy()) > 0.9


def test_classifier_below_floor_is_refused(convs, fortunes, pool, cache, tmp_path):
    rng = np.random.default_rng(0)
    coin = rng.permutation([0, 1] * 60)  # labels that say nothing about the text
    _write(tmp_path / "noise.jsonl", _labelled(convs, fortunes, lambda good, i: {"label": int(coin[i + 60 * good])}))
    ctx = StepContext(cache_dir=cache, base_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match=r"refusing to score with this classifier: held-out balanced_accuracy .* < min_heldout 0.7"):
        embed_quality(pool, EmbedQualityOptions(labelled="noise.jsonl", min_heldout=0.7, embedding=EMB), ctx)
    assert ctx.stats["classifier"]["heldout_score"] < 0.7  # reported even when refused


def test_labels_need_a_known_good_value(convs, fortunes, pool, cache, tmp_path):
    _write(tmp_path / "xy.jsonl", _labelled(convs, fortunes, lambda good, i: {"label": "x" if good else "y"}))
    with pytest.raises(ValueError, match="set positive_label"):
        _run(pool, cache, tmp_path, labelled="xy.jsonl")
    kept, _, stats = _run(pool, cache, tmp_path, labelled="xy.jsonl", positive_label="x")
    assert stats["classifier"]["positive_label"] == "x"
    assert _auc(kept["quality"].to_numpy(), kept["is_conv"].to_numpy()) > 0.9


def test_options_need_one_source():
    with pytest.raises(ValidationError, match="give `reference`"):
        EmbedQualityOptions()
    with pytest.raises(ValidationError, match="give `reference`"):
        EmbedQualityOptions(reference="a.jsonl", labelled="b.jsonl")
    assert EmbedQualityOptions(reference="a.jsonl").mode == "reference"
    with pytest.raises(ValidationError, match="needs `labelled`"):
        EmbedQualityOptions(mode="classifier", reference="a.jsonl")
