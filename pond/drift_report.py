"""A drop's drift report, `drops/NNN/drift.json` (the statistics: curation.drift).

The drop's kept rows are compared with the pond's (every earlier generation's kept rows): in embedding
space (the cached embeddings of curation.embed, MMD permutation test), in length and in language mix;
each step's rejection rate against the earlier generations'; clusters new in the drop and clusters
it no longer touches; and the current adapter's loss on a sample of the drop's rows against its loss
on the held-out set. `drifted` is the embedding test's p below `retrain.drift.alpha`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation import drift as stats
from curation.embed import EmbeddingOptions, embed_texts
from pond import layout
from pond.executors.shards import read_output

Log = Callable[[str], None]


def _rates(gen: Path) -> dict[str, tuple[int, int]]:
    """(rejected, in) per step folder; holdout is left out (a drop draws nothing)."""
    return {row["step"]: (int(row.get("rejected", 0)), int(row.get("in", 0)))
            for row in layout.funnel(gen) if row.get("status") == "done" and row.get("kind") != "holdout"}


def adapter_loss(run: Path, recipe, rows: pl.DataFrame, cache_dir: Path | None, n: int, seed: int) -> dict[str, Any]:
    """Mean answer-token loss of the current adapter on up to n drop rows and n held-out rows."""
    from evaluation.bootstrap import bootstrap_ci
    from pond.retrain import current_adapter, heldout_rows, loss_rows, scorable

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


def drift_report(run: Path, drop: Path, recipe, *, cache_dir: Path | None = None) -> dict[str, Any]:
    from pond.retrain import DriftOptions
    from pond.update import curated_generations

    opts = recipe.retrain.drift if recipe.retrain is not None else DriftOptions()
    seed = recipe.seed
    earlier = [g for g in curated_generations(run) if g != drop]
    pond = pl.concat([read_output(layout.final_kept(g)).select("id", "text") for g in earlier])
    new = read_output(layout.final_kept(drop))
    pond_s = pond[stats.stable_sample(pond["id"].to_list(), opts.sample, seed)]
    new_s = new.select("id", "text")[stats.sample_indices(new.height, opts.sample, seed)]
    pond_t = pond_s["text"].fill_null("").to_list()
    new_t = new_s["text"].fill_null("").to_list()
    report: dict[str, Any] = {"drop": layout.drop_number(drop), "pond_rows": pond.height, "drop_rows": new.height,
                              "alpha": opts.alpha}
    if new.height < 2:
        return {**report, "drifted": False, "p_value": None, "note": "fewer than two new rows kept: nothing to test"}
    ep = embed_texts(pond_t, EmbeddingOptions(), cache_dir)
    en = embed_texts(new_t, EmbeddingOptions(), cache_dir)
    emb = stats.mmd_test(ep, en, permutations=opts.permutations, seed=seed)
    report.update({"drifted": emb["p_value"] is not None and emb["p_value"] < opts.alpha, "p_value": emb["p_value"],
                   "embedding": emb})
    report["length"] = stats.length_shift([len(t) for t in pond_t], [len(t) for t in new_t])
    report["language"] = stats.language_mix(stats.languages(pond_t), stats.languages(new_t))
    before: dict[str, list[tuple[int, int]]] = {}
    for g in earlier:
        for step, rate in _rates(g).items():
            before.setdefault(step, []).append(rate)
    report["rejections"] = stats.rejection_flags(_rates(drop), before, opts.rejection_confidence)
    report["rejections_flagged"] = [s for s, r in report["rejections"].items() if r["flagged"]]
    report["clusters"] = stats.cluster_changes(ep, en, pond_t, new_t, k=opts.clusters, seed=seed)
    report["adapter_loss"] = adapter_loss(run, recipe, new, cache_dir, opts.loss_rows, seed)
    return report


def write_drift(run: Path, drop: Path, recipe, *, cache_dir: Path | None = None, log: Log = lambda m: None) -> dict:
    """drift.json of the drop (kept if already written: a resumed update does not redo it)."""
    from pond.runner import write_json

    path = Path(drop) / layout.DRIFT
    done = layout.read_json(path)
    if done:
        return done
    report = drift_report(run, drop, recipe, cache_dir=cache_dir)
    write_json(report, path)
    c = report.get("clusters") or {}
    log(f"drift: p = {report.get('p_value')} ({'drifted' if report['drifted'] else 'no drift'}), "
        f"{len(c.get('new', []))} new clusters, {len(c.get('gone', []))} gone, "
        f"rejection rates flagged: {', '.join(report.get('rejections_flagged', [])) or 'none'}")
    return report
