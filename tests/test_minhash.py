"""MinHash near-duplicate removal: signatures vs datasketch, LSH parameters, exact verification,
deterministic clusters, keep strategies, and real duplicates in Debian fortunes."""
from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from curation.minhash import MinhashDedupOptions, minhash_dedup
from curation.minhash_signatures import (candidate_probability, hash32, optimal_bands, pair_jaccard, permutations,
                                         signatures, sorted_sets)
from curation.records import MESSAGES
from curation.shingles import jaccard, reference_shingles, reference_tokens, shingle_hashes
from curation.step import StepContext


def frame(texts: list[str], ids: list[str] | None = None, **extra) -> pl.DataFrame:
    ids = ids or [f"r{i:04d}" for i in range(len(texts))]
    return pl.DataFrame({"id": ids, "messages": [[] for _ in texts], "text": texts, "source": "test", **extra},
                        schema_overrides={"messages": MESSAGES})


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def variant(base: list[str], edits: int, rng: random.Random, tag: str) -> list[str]:
    out = list(base)
    for k, pos in enumerate(rng.sample(range(len(out)), edits)):
        out[pos] = f"{tag}{k}"
    return out


TRICKY = [
    "Hello, World!  Hello...\tworld? (hello)",
    "Don't stop—believing: it's 3.14 o'clock.\n\nNew paragraph here, with   extra spaces.",
    "Ünïcödé wörds, naïve café; Straße and ÉCOLE.",
    "short text",
    "",
    "one",
    "   ",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3,
]


def test_vectorised_shingles_match_the_reference():
    texts = pl.Series(TRICKY)
    for n in (1, 3, 5):
        hashes, offsets = shingle_hashes(texts, n)
        sets = [set(hashes[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(TRICKY))]
        refs = [reference_shingles(t, n) for t in TRICKY]
        assert [len(s) for s in sets] == [len(r) for r in refs]
        for i in range(len(TRICKY)):
            for j in range(len(TRICKY)):
                assert jaccard(sets[i], sets[j]) == pytest.approx(jaccard(refs[i], refs[j]))


def test_char_shingles_match_the_reference():
    texts = pl.Series(TRICKY)
    hashes, offsets = shingle_hashes(texts, 4, "char")
    assert [len(set(hashes[offsets[i]:offsets[i + 1]].tolist())) for i in range(len(TRICKY))] == \
        [len(reference_shingles(t, 4, "char")) for t in TRICKY]


def test_signatures_equal_datasketch_for_the_same_hashes_and_seed():
    rng, vocab = random.Random(1), words(500)
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 80))) for _ in range(20)]
    hashes, offsets = shingle_hashes(pl.Series(texts), 5)
    h32 = hash32(hashes)
    a, b = permutations(128, 7)
    ref = MinHash(num_perm=128, seed=7)
    assert np.array_equal(ref.permutations[0], a) and np.array_equal(ref.permutations[1], b)
    sig = signatures(h32, offsets, a, b)
    for i in range(len(texts)):
        m = MinHash(num_perm=128, seed=7, hashfunc=int)
        m.update_batch(h32[offsets[i]:offsets[i + 1]].tolist())
        assert np.array_equal(m.hashvalues, sig[i]), texts[i][:50]


def test_jaccard_estimates_agree_with_datasketch_default_hashing():
    """datasketch with its own SHA-1 hashing and ours estimate the same Jaccard within error."""
    num_perm, rng = 256, random.Random(2)
    base = words(400)
    for edits in (5, 20, 40, 80, 150):
        other = variant(base, edits, rng, "x")
        texts = [" ".join(base), " ".join(other)]
        truth = jaccard(*(reference_shingles(t, 5) for t in texts))
        hashes, offsets = shingle_hashes(pl.Series(texts), 5)
        sig = signatures(hash32(hashes), offsets, *permutations(num_perm, 0))
        ours = float(np.mean(sig[0] == sig[1]))
        ds = []
        for t in texts:
            m = MinHash(num_perm=num_perm, seed=0)
            m.update_batch([" ".join(s).encode() for s in reference_shingles(t, 5)])
            ds.append(m)
        theirs = ds[0].jaccard(ds[1])
        sigma = math.sqrt(max(truth * (1 - truth), 0.01) / num_perm)
        assert abs(ours - truth) < 4 * sigma, (edits, ours, truth)
        assert abs(theirs - truth) < 4 * sigma, (edits, theirs, truth)
        assert abs(ours - theirs) < 4 * math.sqrt(2) * sigma


@pytest.mark.parametrize("threshold,weights", [(0.5, (0.5, 0.5)), (0.8, (0.5, 0.5)), (0.9, (0.3, 0.7)), (0.7, (0.1, 0.9))])
def test_lsh_parameters_follow_datasketchs_optimiser(threshold, weights):
    assert optimal_bands(threshold, 128, *weights) == _optimal_param(threshold, 128, *weights)


def test_min_recall_constrains_the_band_choice():
    b, r = optimal_bands(0.8, 128, 0.5, 0.5, 0.995)
    assert b * r <= 128
    assert candidate_probability(0.8, b, r) >= 0.995
    # plain optimiser at 0.8 misses many pairs right at the threshold
    assert candidate_probability(0.8, *optimal_bands(0.8, 128)) < 0.9


def test_pair_jaccard_is_exact():
    rng, vocab = random.Random(3), words(60)
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 50))) for _ in range(30)]
    sets = sorted_sets(*shingle_hashes(pl.Series(texts), 2))
    a = np.array([i for i in range(30) for j in range(30) if i < j])
    b = np.array([j for i in range(30) for j in range(30) if i < j])
    got = pair_jaccard(sets, a, b)
    want = [jaccard(reference_shingles(texts[i], 2), reference_shingles(texts[j], 2)) for i, j in zip(a, b)]
    assert got == pytest.approx(want)


def test_exact_verification_decides_pairs_next_to_the_threshold(tmp_path):
    """Word sets with J = 889/1111 = 0.8002 (over) and 888/1112 = 0.7986 (under): LSH proposes both,
    only the first is merged."""
    rng = random.Random(4)
    over_base, under_base = words(1000, "o"), words(1000, "u")
    texts = [" ".join(over_base), " ".join(variant(over_base, 111, rng, "p")),
             " ".join(under_base), " ".join(variant(under_base, 112, rng, "q"))]
    df = frame(texts, ids=["over-a", "over-b", "under-a", "under-b"])
    ctx = StepContext(step_dir=tmp_path)
    kept, rejected = minhash_dedup(df, MinhashDedupOptions(ngram=1, threshold=0.8), ctx)
    assert sorted(kept["id"]) == ["over-a", "under-a", "under-b"]
    assert rejected["id"].to_list() == ["over-b"]
    assert rejected["duplicate_of"].to_list() == ["over-a"]
    assert rejected["dup_jaccard"][0] == pytest.approx(889 / 1111)
    pairs = pl.read_parquet(tmp_path / "pairs.parquet")
    under = pairs.filter(pl.col("id_a").str.starts_with("under"))
    assert len(under) == 1 and not under["duplicate"][0]  # was a candidate, verification said no
    assert under["jaccard"][0] == pytest.approx(888 / 1112)
    assert ctx.stats["candidate_pairs_below_threshold"] == 1


def planted_corpus(n_groups: int = 25, singles: int = 60, seed: int = 5) -> pl.DataFrame:
    rng, vocab = random.Random(seed), words(3000)
    texts = []
    for g in range(n_groups):
        base = [rng.choice(vocab) for _ in range(120)]
        texts.append(" ".join(base))
        for k in range(rng.randint(1, 3)):
            texts.append(" ".join(variant(base, rng.randint(0, 1), rng, f"e{g}_{k}_")))
    texts += [" ".join(rng.choice(vocab) for _ in range(120)) for _ in range(singles)]
    ids = [f"doc-{rng.getrandbits(40):010x}" for _ in texts]
    return frame(texts, ids=ids, label=list(range(len(texts))))


def cluster_map(kept: pl.DataFrame, rejected: pl.DataFrame) -> dict[str, str | None]:
    both = pl.concat([kept.select("id", "dup_cluster"), rejected.select("id", "dup_cluster")])
    return dict(both.iter_rows())


def test_cluster_ids_do_not_depend_on_row_order():
    df = planted_corpus()
    opts = MinhashDedupOptions(keep="longest")
    first = minhash_dedup(df, opts, StepContext())
    for seed in (1, 2):
        shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed)
        assert shuffled["id"].to_list() != df["id"].to_list()
        again = minhash_dedup(shuffled, opts, StepContext())
        assert cluster_map(*again) == cluster_map(*first)
        assert sorted(again[0]["id"]) == sorted(first[0]["id"])
        assert dict(again[1].select("id", "duplicate_of").iter_rows()) == dict(first[1].select("id", "duplicate_of").iter_rows())
    kept, rejected = first
    members: dict[str, list[str]] = {}
    for i, c in cluster_map(kept, rejected).items():
        if c is not None:
            members.setdefault(c, []).append(i)
    assert len(members) == 25  # every planted group, nothing else
    assert all(c == min(ids) for c, ids in members.items())  # cluster id = smallest member id


def test_pairs_file_written_in_slices_is_the_file_written_whole(tmp_path, monkeypatch):
    import curation.minhash as mh

    df = planted_corpus()
    minhash_dedup(df, MinhashDedupOptions(), StepContext(step_dir=tmp_path / "whole"))
    monkeypatch.setattr(mh, "PAIRS_SLICE", 3)
    minhash_dedup(df, MinhashDedupOptions(), StepContext(step_dir=tmp_path / "sliced"))
    whole = pl.read_parquet(tmp_path / "whole" / "pairs.parquet")
    assert len(whole) > 6 and whole.equals(pl.read_parquet(tmp_path / "sliced" / "pairs.parquet"))
    assert whole.schema == {"id_a": pl.Utf8, "id_b": pl.Utf8, "jaccard": pl.Float64, "duplicate": pl.Boolean}


def test_counts_conserve_and_columns_ride_along():
    df = planted_corpus()
    kept, rejected = minhash_dedup(df, MinhashDedupOptions(), StepContext())
    assert len(kept) + len(rejected) == len(df)
    assert set(df.columns) <= set(kept.columns) and set(df.columns) <= set(rejected.columns)
    assert {"dup_cluster", "duplicate_of", "dup_jaccard", "stage", "reason"} <= set(rejected.columns)
    assert set(rejected["stage"]) == {"minhash_dedup"} and set(rejected["reason"]) == {"near_duplicate"}
    assert kept["dup_cluster"].null_count() == len(kept) - 25  # singletons carry no cluster
    assert set(rejected["duplicate_of"]) <= set(kept["id"])
    assert kept["label"].to_list() == sorted(kept["label"].to_list())  # input order kept


def test_keep_strategies():
    base = words(200)
    texts = [" ".join(base[:195]), " ".join(base), " ".join(base[:198])]
    df = frame(texts, ids=["c", "a", "b"], quality=[0.9, 0.1, None])
    picks = {}
    for keep in ("first", "longest", "quality"):
        kept, rejected = minhash_dedup(df, MinhashDedupOptions(keep=keep), StepContext())
        assert len(kept) == 1 and set(rejected["duplicate_of"]) == {kept["id"][0]}
        assert kept["dup_cluster"][0] == "a" and set(rejected["dup_cluster"]) == {"a"}
        picks[keep] = kept["id"][0]
    assert picks == {"first": "c", "longest": "a", "quality": "c"}
    with pytest.raises(ValueError, match="no column 'score'"):
        minhash_dedup(df, MinhashDedupOptions(keep="quality", score_column="score"), StepContext())


def test_texts_without_shingles_are_not_duplicates_of_each_other():
    df = frame(["", "   ", "!!!", "real words here and there", "real words here and there"])
    kept, rejected = minhash_dedup(df, MinhashDedupOptions(ngram=3), StepContext())
    assert len(rejected) == 1 and rejected["text"][0] == "real words here and there"


def test_char_shingle_mode_finds_typo_variants():
    a = "The committee will reconvene on Thursday to finalise the annual budget proposal for review."
    b = "The comittee will reconvene on Thursday to finalize the annual budget proposal for review."
    df = frame([a, b, "Something else entirely, about gardening and the weather in spring time."])
    kept, rejected = minhash_dedup(df, MinhashDedupOptions(shingle="char", ngram=5, threshold=0.7), StepContext())
    assert rejected["id"].to_list() == ["r0001"]


def test_options_validate():
    with pytest.raises(ValueError):
        MinhashDedupOptions(bands=10)
    with pytest.raises(ValueError):
        MinhashDedupOptions(bands=20, rows=10, num_perm=128)
    with pytest.raises(ValueError):
        MinhashDedupOptions(colour="red")


def test_fortunes_exact_duplicate_groups_end_up_in_one_cluster(fortunes_df):
    """Real data: every group of fortunes with identical normalised words is one cluster, and each
    rejected fortune's best exact Jaccard within its cluster (recomputed here) is what the step says."""
    kept, rejected = minhash_dedup(fortunes_df, MinhashDedupOptions(threshold=0.8, ngram=3), StepContext())
    assert len(kept) + len(rejected) == len(fortunes_df)
    clusters = cluster_map(kept, rejected)
    norm = fortunes_df.select("id", pl.col("text").map_elements(
        lambda t: " ".join(reference_tokens(t)), return_dtype=pl.Utf8).alias("norm"))
    groups = norm.filter(pl.col("norm") != "").group_by("norm").agg("id").filter(pl.col("id").list.len() > 1)
    assert len(groups) > 150  # Debian's fortunes repeat themselves (~219 groups)
    for ids in groups["id"]:
        assert clusters[ids[0]] is not None and len({clusters[i] for i in ids}) == 1
    texts = dict(fortunes_df.select("id", "text").iter_rows())
    members: dict[str, list[str]] = {}
    for i, c in clusters.items():
        if c is not None:
            members.setdefault(c, []).append(i)
    for row in rejected.sample(min(100, len(rejected)), seed=0).iter_rows(named=True):
        mine = reference_shingles(texts[row["id"]], 3)
        best = max(jaccard(mine, reference_shingles(texts[o], 3)) for o in members[row["dup_cluster"]] if o != row["id"])
        assert best >= 0.8 and best == pytest.approx(row["dup_jaccard"])


def test_empty_input():
    kept, rejected = minhash_dedup(frame([]), MinhashDedupOptions(), StepContext())
    assert len(kept) == len(rejected) == 0 and "dup_cluster" in kept.columns


def test_importing_the_step_does_not_import_scipy():
    """Every command that loads the step table imports this module; scipy.sparse (0.2 s) waits for clustering."""
    import subprocess
    import sys

    code = "import sys, curation.minhash; print('scipy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_verification_of_spilled_pairs_keeps_every_group_on_disk(tmp_path, monkeypatch):
    """Candidates spilled (a few pairs held at once): every group's pairs and every result go to disk, not only
    the candidates (each is small, but together they are as many as the pairs), and the Jaccards equal those
    verified all in memory, pair for pair in the same order."""
    import curation.minhash as mh
    import curation.minhash_pairs as mp

    df = planted_corpus(n_groups=40, singles=30)
    opts = MinhashDedupOptions(verify_batch_docs=6)
    texts = df["text"]
    order, rank = mh.id_order(df["id"])
    pairs, _ = mh.candidate_pairs([texts], rank, opts, 0, StepContext())
    whole = mh.verify_pairs(texts, order, pairs, opts, StepContext()).frame()

    monkeypatch.setattr(mp, "PAIRS_HELD", 5)
    held_frames = []
    add = mp.Pairs.add

    def watched(self, frame):
        add(self, frame)
        if self.folder is not None and self.folder.name.startswith(("group", "jaccard")) and len(frame):
            held_frames.append(isinstance(self.parts[-1], pl.DataFrame))

    monkeypatch.setattr(mp.Pairs, "add", watched)
    spilled, _ = mh.candidate_pairs([texts], rank, opts, 0, StepContext(), tmp_path / "candidates")
    assert spilled.spilled and len(spilled) == len(whole) > 30
    verified = mh.verify_pairs(texts, order, spilled, opts, StepContext(), tmp_path / "verify")
    assert len(held_frames) > 10 and not any(held_frames)
    assert verified.spilled and verified.frame().equals(whole)
