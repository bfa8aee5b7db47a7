"""SemDeDup on real text: paraphrases MinHash cannot see, keep policies, determinism."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curation.embed import EmbeddingOptions, embed_texts
from curation.ingest import records_from_dicts
from curation.minhash import MinhashDedupOptions, minhash_dedup
from curation.semantic_dedup import SemanticDedupOptions, default_clusters, semantic_dedup, semdedup
from curation.step import StepContext

# Same meaning, different words: no 5-word shingle in common, so MinHash keeps both.
PARAPHRASES = [
    ("The meeting has been moved to Thursday afternoon because the manager is travelling.",
     "Because the manager is away on a trip, we rescheduled the meeting for Thursday afternoon."),
    ("How do I reverse a list in Python?", "What's the way to flip the order of a Python list?"),
    ("Drinking enough water every day is important for staying healthy.",
     "Staying well hydrated daily is key to good health."),
    ("Can you recommend a good book about the history of Rome?",
     "Could you suggest a well-written book on Roman history?"),
    ("The train was delayed by forty minutes due to snow on the tracks.",
     "Snow on the rails held the train up for forty minutes."),
    ("What is the capital city of Australia?", "Which city is Australia's capital?"),
    ("Please turn off the lights when you leave the room.",
     "Switch the lights off when you go out of the room, please."),
]
EPS = 0.25  # MiniLM puts these pairs at cosine 0.74-0.96


@pytest.fixture(scope="module")
def ctx_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "pond-embed-cache"


@pytest.fixture(scope="module")
def frame(fortunes_df) -> pl.DataFrame:
    """300 real fortunes with the paraphrase pairs spread among them (first of a pair comes first)."""
    background = fortunes_df.sample(300, seed=3)
    firsts = records_from_dicts([{"text": a} for a, _ in PARAPHRASES], source="para-a")
    seconds = records_from_dicts([{"text": b} for _, b in PARAPHRASES], source="para-b")
    return pl.concat([firsts, background.head(150), seconds, background.tail(150)], how="diagonal_relaxed")


def _run(df, ctx_cache, **opts):
    ctx = StepContext(cache_dir=ctx_cache, seed=0)
    kept, rejected = semantic_dedup(df, SemanticDedupOptions(eps=EPS, **opts), ctx)
    return kept, rejected, ctx.stats


def test_paraphrases_removed_that_minhash_keeps(frame, ctx_cache):
    mh_kept, _ = minhash_dedup(frame, MinhashDedupOptions(), StepContext(cache_dir=ctx_cache))
    para_ids = set(frame.filter(pl.col("source").str.starts_with("para"))["id"])
    assert para_ids <= set(mh_kept["id"]), "MinHash should not see these paraphrases"

    kept, rejected, stats = _run(frame, ctx_cache)
    assert len(kept) + len(rejected) == len(frame)
    assert set(kept.columns) == set(frame.columns)
    first_ids = frame.filter(pl.col("source") == "para-a")["id"].to_list()
    second_ids = frame.filter(pl.col("source") == "para-b")["id"].to_list()
    dup_of = dict(zip(rejected["id"], rejected["duplicate_of"]))
    for a, b in zip(first_ids, second_ids):
        assert a in set(kept["id"])
        assert dup_of.get(b) == a, f"{b} should be rejected as a duplicate of {a}"
    by_id = dict(zip(rejected["id"], rejected["reason"]))
    assert all(by_id[b] == f"semantic_duplicate_of:{a}" for a, b in zip(first_ids, second_ids))
    assert set(rejected["stage"]) == {"semantic_dedup"}
    assert stats["duplicates"] == len(rejected) and stats["clusters"] == 1


def test_no_two_kept_rows_are_within_eps(frame, ctx_cache):
    kept, rejected, _ = _run(frame, ctx_cache)
    emb = embed_texts(kept["text"].to_list(), EmbeddingOptions(), ctx_cache)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= 1 - EPS
    # every rejected row really is that close to the row it names
    all_emb = dict(zip(frame["id"], embed_texts(frame["text"].to_list(), EmbeddingOptions(), ctx_cache)))
    for rid, kid, cos in rejected.select("id", "duplicate_of", "dup_cosine").iter_rows():
        assert float(all_emb[rid] @ all_emb[kid]) == pytest.approx(cos, abs=1e-4)
        assert cos > 1 - EPS and kid in set(kept["id"])


def test_keep_policies(frame, ctx_cache):
    kept, _, _ = _run(frame, ctx_cache, keep="longest")
    kept_ids = set(kept["id"])
    firsts = frame.filter(pl.col("source") == "para-a")
    seconds = frame.filter(pl.col("source") == "para-b")
    for (ia, ta), (ib, tb) in zip(firsts.select("id", "text").iter_rows(), seconds.select("id", "text").iter_rows()):
        longer, shorter = (ia, ib) if len(ta) >= len(tb) else (ib, ia)
        assert longer in kept_ids and shorter not in kept_ids
    # quality: the pair member with the higher score stays, whatever its position
    scored = frame.with_columns(pl.when(pl.col("source") == "para-b").then(1.0).otherwise(0.0).alias("quality"))
    kept, rejected, _ = _run(scored, ctx_cache, keep="quality")
    assert set(seconds["id"]) <= set(kept["id"])
    assert set(firsts["id"]) <= set(rejected["id"])
    with pytest.raises(ValueError, match="no column 'quality'"):
        _run(frame, ctx_cache, keep="quality")


def test_deterministic_with_clusters(frame, ctx_cache):
    a = _run(frame, ctx_cache, n_clusters=4)
    b = _run(frame, ctx_cache, n_clusters=4)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert a[2]["clusters"] == 4 and a[2]["largest_cluster"] < len(frame)


def test_semdedup_finds_injected_near_duplicates_across_many_clusters():
    rng = np.random.default_rng(0)
    n, d = 6000, 64
    centres = rng.normal(size=(30, d))
    emb = centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d))
    src, dst = rng.choice(3000, 300, replace=False), np.arange(3000, 3300)
    emb[dst] = emb[src] + rng.normal(scale=0.05, size=(300, d))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    res = semdedup(emb, np.arange(n), eps=0.02, k=default_clusters(n, 500), seed=0)
    assert len(np.unique(res["cluster"])) == 12
    assert not res["keep"][dst].any()
    np.testing.assert_array_equal(res["dup_of"][dst], src)
    # background rows are far apart in 64 dimensions: nothing else goes
    assert res["keep"].sum() == n - 300
