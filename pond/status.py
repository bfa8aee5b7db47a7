"""`pond status RUN`: the pond's generations, rows per drop, drift flags, adapter versions and the
last comparison, on one screen (read from the run folder only; nothing is computed)."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from curation import store
from pond import layout


def _p(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def status_lines(run: Path) -> list[str]:
    run = Path(run)
    lines = [f"run: {run}"]
    lineage = pl.read_parquet(run / layout.LINEAGE) if (run / layout.LINEAGE).exists() else None
    per_drop = dict(lineage.group_by("drop").len().iter_rows()) if lineage is not None else {}
    curated = pl.scan_parquet(run / layout.CURATED).select(pl.len()).collect().item() \
        if (run / layout.CURATED).exists() else 0
    lines.append(f"pond: {curated} curated rows in {len(layout.generations(run))} generation(s)")
    lines.append(f"  {'drop':<5} {'in':>8} {'kept':>8}  {'drift p':>8}  {'drifted':<7}  {'new/gone clusters':<17}  "
                 f"{'flagged steps':<20}  retrain")
    for gen in layout.generations(run):
        n = layout.generation_number(run, gen)
        funnel = layout.funnel(gen)
        rows_in = funnel[0].get("in", 0) if funnel else 0
        kept = per_drop.get(n, funnel[-1].get("out", 0) if funnel else 0)
        if n == 0:
            lines.append(f"  {n:03d}   {rows_in:>8} {kept:>8}  {'-':>8}  {'-':<7}  {'-':<17}  {'-':<20}  (the run)")
            continue
        drift = layout.read_json(gen / layout.DRIFT)
        decision = layout.read_json(gen / layout.RETRAIN)
        clusters = drift.get("clusters") or {}
        cl = f"{len(clusters.get('new', []))}/{len(clusters.get('gone', []))}" if clusters else "-"
        flagged = ",".join(s.split("-", 1)[-1] for s in drift.get("rejections_flagged", [])) or "-"
        fired = [k for k, c in (decision.get("checks") or {}).items() if c.get("met")]
        retrain = (f"v{decision['version']} ({', '.join(fired)})" if decision.get("version")
                   else ("fired, not trained" if decision.get("fired") else "no")) if decision else "-"
        state = "" if store.finished(gen) else "  [unfinished]"
        lines.append(f"  {n:03d}   {rows_in:>8} {kept:>8}  {_p(drift.get('p_value')):>8}  "
                     f"{str(drift.get('drifted', '-')).lower():<7}  {cl:<17}  {flagged:<20}  {retrain}{state}")
    versions = [v for v in layout.version_dirs(run) if (v / layout.VERSION_CARD).exists()]
    own = layout.run_adapter(run) is not None
    lines.append("adapters: " + (", ".join((["adapter (the run's)"] if own else [])
                                           + [v.name for v in versions]) or "none"))
    if versions:
        card = layout.read_json(versions[-1] / layout.VERSION_CARD)
        lines.append(f"  {card['version']}: {card['curated_rows']} rows, dataset {card['dataset_hash'][:16]}, drops "
                     f"{card['drops']}, previous {card['previous_version'] or 'none'}")
        cmp = card.get("comparison")
        if cmp:
            d = cmp["new_minus_previous"]
            lines.append(f"  last comparison on {cmp['heldout_rows']} held-out rows: loss {cmp['new']['mean']:.4f} vs "
                         f"{cmp['against']} {cmp['previous']['mean']:.4f} (difference {d['mean']:+.4f}, 95% CI "
                         f"{d['low']:+.4f} to {d['high']:+.4f}): {cmp['verdict']}")
        ml = card.get("mlflow") or {}
        if ml.get("registered_model"):
            lines.append(f"  mlflow: {ml['registered_model']} version {ml['model_version']} ({ml['tracking_uri']})")
    return lines


def report_section(run: Path) -> str:
    """The run report's "Data drops" section (Markdown): per drop its rows, drift tests, flagged steps,
    new and vanished clusters and the retrain decision; then the adapter versions and their comparisons."""
    run = Path(run)
    out = ["## Data drops", "",
           "| drop | rows in | kept | drift p (MMD) | drifted | length p | language p | flagged steps | new / gone clusters | retrain |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for gen in layout.drop_dirs(run):
        drift = layout.read_json(gen / layout.DRIFT)
        decision = layout.read_json(gen / layout.RETRAIN)
        funnel = layout.funnel(gen)
        c = drift.get("clusters") or {}
        retrain = f"v{decision['version']}" if decision.get("version") else ("fired" if decision.get("fired") else "no")
        out.append(f"| {gen.name} | {funnel[0].get('in', 0) if funnel else 0} | {drift.get('drop_rows', '-')} | "
                   f"{_p(drift.get('p_value'))} | {drift.get('drifted', '-')} | "
                   f"{_p((drift.get('length') or {}).get('p_value'))} | {_p((drift.get('language') or {}).get('p_value'))} | "
                   f"{', '.join(drift.get('rejections_flagged', [])) or '-'} | "
                   f"{len(c.get('new', []))} / {len(c.get('gone', []))} | {retrain} |")
    for gen in layout.drop_dirs(run):
        new = (layout.read_json(gen / layout.DRIFT).get("clusters") or {}).get("new", [])
        for cl in new:
            examples = "; ".join(e.replace("\n", " ")[:80].replace("|", "/") for e in cl["examples"])
            out.append(f"\nDrop {gen.name}, new cluster {cl['cluster']} ({cl['drop_share']:.0%} of the drop, "
                       f"{cl['pond_share']:.0%} of the pond): {examples}")
    versions = [v for v in layout.version_dirs(run) if (v / layout.VERSION_CARD).exists()]
    if versions:
        out += ["", "| version | rows | drops | previous | held-out loss | previous | difference (95% CI) |",
                "|---|---|---|---|---|---|---|"]
        for v in versions:
            card = layout.read_json(v / layout.VERSION_CARD)
            cmp = card.get("comparison") or {}
            d = cmp.get("new_minus_previous") or {}
            out.append(f"| {card['version']} | {card['curated_rows']} | {card['drops']} | "
                       f"{card['previous_version'] or 'none'} | {_p((cmp.get('new') or {}).get('mean'))} | "
                       f"{_p((cmp.get('previous') or {}).get('mean'))} | "
                       + (f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] |" if d else "- |"))
    return "\n".join(out) + "\n"
