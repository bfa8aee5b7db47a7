"""The select step on real text: exactly n rows, deterministic, and each strategy doing its job."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curation.embed import EmbeddingOptions, embed_texts
from curation.records import answer_text_expr
from curation.selection import SelectOptions, select
from curation.step import StepContext

STRATEGIES = ["random", "longest", "quality", "quality_diverse", "kcenter"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "pond-embed-cache"


@pytest.fixture(scope="module")
def pool(fortunes_df) -> pl.DataFrame:
    """250 real fortunes, some repeated verbatim, with a score that is not just length."""
    rows = fortunes_df.sample(200, seed=7)
    repeats = rows.head(50).with_columns(pl.col("id") + "-again")
    df = pl.concat([rows, repeats])
    rng = np.random.default_rng(0)
    return df.with_columns(pl.Series("quality", rng.random(len(df))))


def _select(df, cache, seed=0, **opts):
    ctx = StepContext(cache_dir=cache, seed=seed)
    kept, rejected = select(df, SelectOptions(**opts), ctx)
    return kept, rejected, ctx.stats


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exactly_n_and_deterministic(pool, cache, strategy):
    kept, rejected, stats = _select(pool, cache, n=40, strategy=strategy)
    assert len(kept) == 40 and len(rejected) == len(pool) - 40
    assert kept["id"].n_unique() == 40 and not set(kept["id"]) & set(rejected["id"])
    assert set(rejected["reason"]) == {"not_selected"} and set(rejected["stage"]) == {"select"}
    assert sorted(kept["select_rank"].to_list()) == list(range(40))
    assert set(rejected.columns) == set(pool.columns) | {"stage", "reason"}
    again, _, _ = _select(pool, cache, n=40, strategy=strategy)
    assert again.equals(kept)
    assert stats["selected"] == 40
    # more than there are: all rows, none rejected
    everything, none, _ = _select(pool.head(30), cache, n=100, strategy=strategy)
    assert len(everything) == 30 and len(none) == 0


def test_random_depends_on_seed(pool, cache):
    a = set(_select(pool, cache, seed=0, n=40)[0]["id"])
    b = set(_select(pool, cache, seed=1, n=40)[0]["id"])
    assert a != b


def test_longest_takes_the_longest_answers(sharegpt_df, cache):
    kept, rejected, _ = _select(sharegpt_df, cache, n=25, strategy="longest")
    length = lambda df: df.select(answer_text_expr().str.len_chars()).to_series()  # noqa: E731
    assert length(kept).min() >= length(rejected).max()


def test_quality_takes_the_top_scores(pool, cache):
    kept, rejected, _ = _select(pool, cache, n=40, strategy="quality")
    assert kept["quality"].min() > rejected["quality"].max()
    with pytest.raises(ValueError, match="no score column 'judge_score'"):
        _select(pool, cache, n=5, strategy="quality", score_column="judge_score")


def test_quality_diverse_admits_only_dissimilar_rows(pool, cache):
    kept, _, stats = _select(pool, cache, n=40, strategy="quality_diverse", threshold=0.5)
    emb = embed_texts(kept["text"].to_list(), EmbeddingOptions(), cache)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 0.5 and stats["passes"] == 1
    # admission order follows the score
    assert kept.sort("select_rank")["quality"].is_sorted(descending=True)
    # verbatim repeats (cosine 1) never sit together until the threshold has relaxed past 1
    assert kept["text"].n_unique() == len(kept)


def test_quality_diverse_relaxes_when_too_few(pool, cache):
    kept, _, stats = _select(pool, cache, n=240, strategy="quality_diverse", threshold=0.3, relax_step=0.1)
    assert len(kept) == 240 and stats["passes"] > 1 and stats["final_threshold"] > 0.3
    # the rows admitted before any relaxing are still pairwise dissimilar
    first = kept.sort("select_rank").head(5)
    emb = embed_texts(first["text"].to_list(), EmbeddingOptions(), cache)
    assert (emb @ emb.T - 2 * np.eye(5)).max() < 0.3


def test_kcenter_covers_better_than_random(pool, cache):
    emb_all = dict(zip(pool["id"], embed_texts(pool["text"].to_list(), EmbeddingOptions(), cache)))
    matrix = np.stack([emb_all[i] for i in pool["id"]])

    def radius(ids):  # the farthest any row is from its nearest chosen row
        chosen = np.stack([emb_all[i] for i in ids])
        return float((1 - matrix @ chosen.T).min(1).max())

    kc, _, stats = _select(pool, cache, n=30, strategy="kcenter")
    rnd = [_select(pool, cache, seed=s, n=30, strategy="random")[0]["id"] for s in range(5)]
    assert radius(kc["id"]) < min(radius(r) for r in rnd)
    assert stats["kcenter_start"] == pool.sort("quality", descending=True)["id"][0]


def test_weighted_sum_of_rank_normalised_columns_by_hand():
    """ifd [0.5, 0.2, 0.9, null] with weight -1, judge [3, 8, 8, 10] with weight 1.

    ifd, low first (null worst): d 0, c 1/3, a 2/3, b 1. judge, average ranks for the 8s: a 0,
    b 0.5, c 0.5, d 1. Sums: a 2/3, b 1.5, c 5/6, d 1 -> b, d, c, a."""
    from curation.selection import weighted_ranks

    df = pl.DataFrame({"id": list("abcd"), "text": list("abcd"), "ifd": [0.5, 0.2, 0.9, None],
                       "judge_score": [3, 8, 8, 10]})
    assert weighted_ranks(df, {"ifd": -1, "judge_score": 1}) == pytest.approx([2 / 3, 1.5, 5 / 6, 1.0])
    ctx = StepContext(seed=0)
    kept, rejected = select(df, SelectOptions(n=2, strategy="quality", score={"ifd": -1, "judge_score": 1}), ctx)
    assert kept.sort("select_rank")["id"].to_list() == ["b", "d"]
    assert sorted(rejected["id"]) == ["a", "c"] and set(rejected["reason"]) == {"not_selected"}
    assert ctx.stats["score_weights"] == {"ifd": -1.0, "judge_score": 1.0}
    # weights scale: ifd twice as important -> a 4/3, b 2.5, c 7/6, d 1
    kept, _ = select(df, SelectOptions(n=4, strategy="quality", score={"ifd": -2, "judge_score": 1}), ctx)
    assert kept.sort("select_rank")["id"].to_list() == ["b", "a", "c", "d"]
    # a null never counts as the best value, whatever the weight's sign
    kept, _ = select(df, SelectOptions(n=4, strategy="quality", score={"ifd": -1}), ctx)
    assert kept.sort("select_rank")["id"].to_list() == ["b", "a", "c", "d"]
    kept, _ = select(df, SelectOptions(n=4, strategy="quality", score={"ifd": 1}), ctx)
    assert kept.sort("select_rank")["id"].to_list() == ["c", "a", "b", "d"]
    # one column by name, under either recipe key, ranks by its raw values as before
    for opts in ({"score": "judge_score"}, {"score_column": "judge_score"}):
        kept, _ = select(df, SelectOptions(n=1, strategy="quality", **opts), ctx)
        assert kept["id"].to_list() == ["d"]
    with pytest.raises(ValueError, match="no score column 'quality_x'"):
        select(df, SelectOptions(n=1, strategy="quality", score={"ifd": -1, "quality_x": 1}), ctx)
    with pytest.raises(ValueError, match="at least one"):
        SelectOptions(n=1, score={})


def test_a_score_no_earlier_step_writes_fails_in_one_line(tmp_path):
    import json

    from pond.recipe import parse_recipe
    from pond.runner import Runner, StepFailed

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"answer {i}"}) + "\n"
                                                 for i in range(20)))
    recipe = parse_recipe("name: t\ninput: {path: rows.jsonl}\nsteps:\n"
                          "  - select: {n: 5, strategy: quality, score: {ifd: -1, judge_score: 1}}\n", "t.yaml")
    with pytest.raises(StepFailed) as err:
        Runner(recipe, tmp_path / "run", tmp_path, cache_dir=tmp_path / "cache").curate()
    assert "\n" not in str(err.value)
    assert "step 01-select failed" in str(err.value) and "no score column 'ifd', 'judge_score'" in str(err.value)
