"""Dedup steps take reference rows (issue 29): `ctx.reference` rows are compared like any row, never
dropped, never in the output; a new row that duplicates one is rejected naming it, whatever the keep
rule prefers. Without a reference (None or empty) the output is the step's usual one."""
from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curation.exact_dedup import ExactDedupOptions, exact_dedup
from curation.ingest import records_from_dicts
from curation.minhash import MinhashDedupOptions, minhash_dedup
from curation.semantic_dedup import SemanticDedupOptions, semantic_dedup
from curation.step import StepContext

POND = [
    "The river floods every spring when the snow in the mountains melts and the water runs down fast.",
    "A good bread needs flour, water, salt, yeast and a long slow rise in a warm kitchen overnight.",
    "Chess openings are studied for years, but the middle game is where most amateur games are decided.",
]
NEW = [
    "Cats sleep for most of the day and hunt at dusk, when the light is low and mice are about.",
    # a longer near copy of POND[0] (keep: longest prefers it) and an exact copy of POND[1]
    "The river floods every spring when the snow in the mountains melts and the water runs down fast, every year.",
    "A good bread needs flour, water, salt, yeast and a long slow rise in a warm kitchen overnight.",
    "Cats sleep for most of the day and hunt at dusk, when the light is low and mice are about.",
]


def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    pond = records_from_dicts([{"text": t} for t in POND], source="pond")
    new = records_from_dicts([{"text": t} for t in NEW], source="drop")
    return pond, new


def exact(df, ctx, keep):
    return exact_dedup(df, ExactDedupOptions(), ctx)


def minhash(df, ctx, keep):
    return minhash_dedup(df, MinhashDedupOptions(threshold=0.7, ngram=3, keep=keep), ctx)


def semantic(df, ctx, keep):
    return semantic_dedup(df, SemanticDedupOptions(eps=0.1, keep=keep), ctx)


STEPS = [pytest.param(exact, id="exact"), pytest.param(minhash, id="minhash"),
         pytest.param(semantic, id="semantic")]
ADDS = {exact: [], minhash: ["dup_cluster"], semantic: []}  # columns each step adds to its kept rows


def run(step, df, reference, cache, keep="longest"):
    ctx = StepContext(cache_dir=cache, reference=reference)
    kept, rejected = step(df, ctx, keep)
    assert len(kept) + len(rejected) == len(df)
    return kept, rejected, ctx.stats


@pytest.mark.parametrize("step", STEPS)
def test_reference_rows_win_and_are_never_output(step, tmp_path):
    pond, new = frames()
    kept, rejected, stats = run(step, new, pond, tmp_path)
    pond_ids = set(pond["id"])
    assert not (set(kept["id"]) | set(rejected["id"])) & pond_ids  # only the step's own rows come out
    assert kept.columns == new.columns + ADDS[step]
    of = dict(zip(rejected["id"], rejected["duplicate_of"]))
    # the exact copy, and (near-duplicate steps) the longer near copy, lose to the pond rows they copy
    assert of[new["id"][2]] == pond["id"][1]
    copies = 1 if step is exact else 2
    if copies == 2:
        assert of[new["id"][1]] == pond["id"][0]  # keep: longest would have kept the drop row
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    if step is not minhash:  # MinHash's reason is `near_duplicate`, its duplicate_of names the row
        assert reasons[new["id"][2]].endswith(f"_duplicate_of:{pond['id'][1]}")
    # among the new rows, the usual rule: one of the two equal cat rows goes, naming the other
    cats = {new["id"][0], new["id"][3]}
    (gone,) = cats & set(of)
    assert of[gone] in cats - {gone} and of[gone] in set(kept["id"])
    # the keep rule alone prefers the longer near copy; MinHash breaks the exact copy's tie by the smaller id
    wins = copies - 1 + (step is minhash and new["id"][2] < pond["id"][1])
    assert stats["against_reference"] == {"reference_rows": 3, "new_rows": 4, "duplicates_of_reference_rows": copies,
                                          "reference_wins_over_keep_rule": wins}


@pytest.mark.parametrize("step", STEPS)
def test_no_or_empty_reference_is_the_usual_step(step, tmp_path):
    pond, new = frames()
    plain = run(step, new, None, tmp_path)
    for reference in (pond.clear(), pl.DataFrame()):
        same = run(step, new, reference, tmp_path)
        assert_frame_equal(same[0], plain[0])
        assert_frame_equal(same[1], plain[1])
        assert "against_reference" not in same[2]


def test_reference_columns_need_not_match(tmp_path):
    """A reference without the score column (a pond never scored) still wins under keep: quality."""
    pond, new = frames()
    scored = new.with_columns(pl.Series("quality", [0.5, 0.9, 0.9, 0.1]))
    kept, rejected, stats = run(minhash, scored, pond, tmp_path, keep="quality")
    assert dict(zip(rejected["id"], rejected["duplicate_of"]))[new["id"][1]] == pond["id"][0]
    assert kept.columns == scored.columns + ["dup_cluster"]
    assert stats["against_reference"]["reference_wins_over_keep_rule"] == 2
