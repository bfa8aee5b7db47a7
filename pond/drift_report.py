"""A drop's drift report, `drops/NNN/drift.json` (the statistics: curation.drift).

The drop's rows are compared with the pond's (every earlier generation's) at the same stage: after
ingest and the per-row steps that come before the first step whose verdicts depend on other rows
(`compared_stage`), so before any dedup against the pond. In embedding space (the cached embeddings
of curation.embed, MMD permutation test), in length and in language mix, each flagged at
`retrain.drift.alpha`; the compared stage's rejection rates against the earlier generations'; clusters
new in the drop and clusters it no longer touches; and the current adapter's loss on a sample of the
drop's kept rows against its loss on the held-out set. `drifted` is the embedding test's p below alpha.

Each side's sample is its stable sample (smallest (seed, id) hash); every generation keeps its own,
embedded, beside its step outputs (`generation_sample`), so the pond's rows are not read and only the
drop's rows are embedded.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation import drift as stats
from curation import store
from curation.embed import EmbeddingOptions, embed_texts
from pond import layout
from pond.executors.shards import read_output
from pond.retrain import current_adapter, heldout_rows, loss_rows, scorable
from pond.retrain_config import DriftOptions
from pond.steps import STEPS

Log = Callable[[str], None]


def _rates(gen: Path) -> dict[str, tuple[int, int]]:
    """(rejected, in) per step folder; the held-out draw is left out (a drop draws nothing)."""
    return {row["step"]: (int(row.get("rejected", 0)), int(row.get("in", 0)))
            for row in layout.funnel(gen) if row.get("status") == "done" and not _writes_heldout(row.get("kind"))}


def _writes_heldout(kind: str | None) -> bool:
    """A step of this kind drew the held-out set (ingest, or a kind the table no longer has, did not)."""
    return kind in STEPS and STEPS[kind].writes_heldout


def adapter_loss(run: Path, recipe, rows: pl.DataFrame, cache_dir: Path | None, n: int, seed: int) -> dict[str, Any]:
    """Mean answer-token loss of the current adapter on up to n drop rows and n held-out rows."""
    from evaluation.bootstrap import bootstrap_ci

    name, adapter = current_adapter(run)
    if name is None or recipe.train is None:
        return {"skipped": "no adapter yet" if name is None else "the recipe has no train: section"}
    held = heldout_rows(run, recipe)
    new = scorable(rows)
    if held is None or new.height == 0:
        return {"adapter": name, "skipped": "no held-out set" if held is None else "no drop row has an answer"}
    held = held[stats.sample_indices(held.height, n, seed)]
    new = new[stats.sample_indices(new.height, n, seed)]
    out: dict[str, Any] = {"adapter": name}
    for label, frame in (("drop", new), ("heldout", held)):
        nll, tok = loss_rows(recipe.train, frame, adapter, cache_dir)
        per = np.divide(nll, tok, out=np.full(len(tok), np.nan), where=tok > 0)
        out[label] = {"rows": frame.height, **bootstrap_ci(per, tok, seed=seed).to_dict()}
    out["relative_increase"] = round(out["drop"]["mean"] / out["heldout"]["mean"] - 1.0, 6)
    return out


def per_row_kinds() -> set[str]:
    """Step kinds whose verdict on a row needs no other row and is the same in a drop as in the run
    (the step table's `per_row`). Any other kind (a dedup, the held-out draw, a selection, a generator,
    a kind added without the trait) ends the compared stage."""
    return {kind for kind, spec in STEPS.items() if spec.per_row}


def compared_stage(gen: Path) -> list[str]:
    """The step folders of the compared stage: ingest and the per-row steps before the first other
    step. Its last folder's kept rows are what is compared: a sample of the source after the same
    per-row rules on both sides. Later rows are not: a drop's dedup runs against the pond and removes
    the drop rows closest to it, so the drop's kept rows are farther from the pond than a fresh
    sample of the same source: not exchangeable with it, as the permutation test needs
    (docs/continuous-curation.md)."""
    per_row = per_row_kinds()
    names = []
    for d in layout.step_dirs(gen):
        if names and d.name.split("-", 1)[-1] not in per_row:
            break
        names.append(d.name)
    return names


def flag(result: dict, alpha: float) -> dict:
    p = result.get("p_value")
    return {**result, "flagged": p is not None and p < alpha}


def compare(pond_t: list[str], new_t: list[str], ep: np.ndarray, en: np.ndarray, opts, seed: int) -> dict[str, Any]:
    """The tests of one drop against the pond, on the two samples' texts and embeddings."""
    emb = stats.mmd_test(ep, en, permutations=opts.permutations, seed=seed)
    return {"drifted": emb["p_value"] is not None and emb["p_value"] < opts.alpha, "p_value": emb["p_value"],
            "embedding": emb,
            "length": flag(stats.length_shift([len(t) for t in pond_t], [len(t) for t in new_t]), opts.alpha),
            "language": flag(stats.language_mix(stats.languages(pond_t), stats.languages(new_t)), opts.alpha),
            "clusters": stats.cluster_changes(ep, en, pond_t, new_t, k=opts.clusters, seed=seed)}


def rejections(earlier: list[Path], drop: Path, stage: list[str], confidence: float) -> dict[str, Any]:
    """Each step's rejection rate against the earlier generations'; only the compared stage's steps are
    tested (the rows a later step sees passed a dedup against the pond in the drop, not in the pond)."""
    before: dict[str, list[tuple[int, int]]] = {}
    for g in earlier:
        for step, rate in _rates(g).items():
            before.setdefault(step, []).append(rate)
    flags = stats.rejection_flags(_rates(drop), before, tested=stage, level=1 - confidence)
    return {"rejections": flags, "rejections_flagged": [s for s, r in flags.items() if r["flagged"]]}


SAMPLE_FORMAT = 1  # raise when what a sample file holds changes: older files are then not read


def sample_embedding(recipe) -> EmbeddingOptions:
    """The embedding settings of the drift samples: `retrain.drift.embedding`, else the first step's that
    embeds rows (so a drop's samples meet its own rows' cached vectors, and a faster backend chosen for
    curation serves drift too), else the default model."""
    opts = recipe.retrain.drift if recipe.retrain is not None else None
    if opts is not None and opts.embedding is not None:
        return opts.embedding
    found = (getattr(s.options, "embedding", None) for s in recipe.steps)
    return next((e for e in found if isinstance(e, EmbeddingOptions)), EmbeddingOptions())


def generation_sample(gen: Path, step: str, opts: DriftOptions, seed: int, cache_dir: Path | None,
                      emb: EmbeddingOptions) -> pl.DataFrame:
    """The stable sample of one generation's rows at step folder `step` (its kept rows): pos (in the
    generation), key, id, text and embedding. Kept beside the step's outputs as `sample-<key>.parquet`
    (<key>: the step's fingerprint, seed, sample size, embedding model), so the pond's sample is drawn
    from these (`pond_sample`) and never embedded twice; a drop embeds only its own rows."""
    folder = layout.step_dir(gen, step)
    done = layout.read_json(folder / layout.STATS)
    key = store.key_of([done.get("fingerprint"), seed, opts.sample, emb.model_dump(mode="json"), SAMPLE_FORMAT])
    path = folder / f"sample-{key[:16]}.parquet"
    if path.exists():
        return pl.read_parquet(path)
    rows = read_output(folder / layout.KEPT).select("id", "text")
    keys = stats.sample_keys(rows["id"].to_list(), seed)
    picked = stats.smallest(keys, opts.sample)
    sample = rows[picked].with_columns(pl.Series("pos", picked, dtype=pl.Int64), pl.Series("key", keys[picked]),
                                       pl.col("text").fill_null(""))
    vectors = embed_texts(sample["text"].to_list(), emb, cache_dir) if len(sample) else np.zeros((0, 1))
    sample = sample.with_columns(pl.Series("embedding", vectors.astype(np.float32))).select(
        "pos", "key", "id", "text", "embedding")
    if store.finished(folder, done.get("fingerprint")):  # keep it only where the step's rows are final
        store.write_parquet(sample, path)
    return sample


def pond_sample(gens: list[Path], step: str, opts: DriftOptions, seed: int, cache_dir: Path | None,
                emb: EmbeddingOptions) -> tuple[list[str], np.ndarray, int]:
    """(texts, embeddings, rows) of the stable sample of every generation's rows at `step` together: drawn
    from each generation's own sample, it is the one `stats.stable_sample` draws from all their rows."""
    parts = [generation_sample(g, step, opts, seed, cache_dir, emb) for g in gens]
    rows = sum(int(layout.read_json(layout.step_dir(g, step) / layout.STATS).get("out", 0)) for g in gens)
    parts = [p for p in parts if len(p)]
    if not parts:
        return [], np.zeros((0, 0), dtype=np.float32), rows
    # generation after generation, each in row order: the order of their rows concatenated
    both = pl.concat(parts)
    picked = both[stats.smallest(both["key"].to_numpy(), opts.sample)]
    return picked["text"].to_list(), picked["embedding"].to_numpy().astype(np.float32), rows


def keep_samples(gen: Path, recipe, cache_dir: Path | None) -> None:
    """A finished generation's samples for later drops' drift reports (its compared stage and its kept rows)."""
    opts = recipe.retrain.drift if recipe.retrain is not None else DriftOptions()
    for step in {compared_stage(gen)[-1], layout.final_kept(gen).parent.name}:
        generation_sample(gen, step, opts, recipe.seed, cache_dir, sample_embedding(recipe))


def drift_report(run: Path, drop: Path, recipe, *, cache_dir: Path | None = None) -> dict[str, Any]:
    opts = recipe.retrain.drift if recipe.retrain is not None else DriftOptions()
    seed = recipe.seed
    earlier = [g for g in layout.curated_generations(run) if g != drop]
    stage = compared_stage(drop)
    last = layout.final_kept(drop).parent.name
    emb = sample_embedding(recipe)
    pond_t, ep, pond_rows = pond_sample(earlier, stage[-1], opts, seed, cache_dir, emb)
    new_t, en, new_rows = pond_sample([drop], stage[-1], opts, seed, cache_dir, emb)
    kept_rows = int(layout.read_json(layout.step_dir(drop, last) / layout.STATS).get("out", 0))
    report: dict[str, Any] = {"drop": layout.drop_number(drop), "stage": stage[-1], "pond_rows": pond_rows,
                              "drop_rows": new_rows, "drop_kept": kept_rows, "alpha": opts.alpha}
    if new_rows < 2:
        return {**report, "drifted": False, "p_value": None, "note": "fewer than two new rows: nothing to test"}
    report.update(compare(pond_t, new_t, ep, en, opts, seed))
    # clusters describe what the pond gains, so they are drawn on kept rows (no test: selection is
    # no harm here, and the ingest stage's repeated fragments would sit in a new source's clusters)
    pond_k, ek, _ = pond_sample(earlier, last, opts, seed, cache_dir, emb)
    new_k, enk, _ = pond_sample([drop], last, opts, seed, cache_dir, emb)
    if pond_k and new_k:
        report["clusters"] = stats.cluster_changes(ek, enk, pond_k, new_k, k=opts.clusters, seed=seed)
    report.update(rejections(earlier, drop, stage, opts.rejection_confidence))
    report["adapter_loss"] = adapter_loss(run, recipe, read_output(layout.final_kept(drop)), cache_dir,
                                          opts.loss_rows, seed)
    return report


def write_drift(run: Path, drop: Path, recipe, *, cache_dir: Path | None = None, log: Log = lambda m: None) -> dict:
    """drift.json of the drop (kept if already written: a resumed update does not redo it)."""
    path = Path(drop) / layout.DRIFT
    done = layout.read_json(path)
    if done:
        return done
    report = drift_report(run, drop, recipe, cache_dir=cache_dir)
    store.write_json(report, path)
    c = report.get("clusters") or {}
    log(f"drift: p = {report.get('p_value')} ({'drifted' if report['drifted'] else 'no drift'}), "
        f"{len(c.get('new', []))} new clusters, {len(c.get('gone', []))} gone, "
        f"rejection rates flagged: {', '.join(report.get('rejections_flagged', [])) or 'none'}")
    return report
