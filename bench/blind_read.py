"""Read what a run keeps, blind: are its rows ones a careful person would keep? (issue 26)

    python bench/blind_read.py make RUN OUT [--curated 40] [--pool 40] [--seed 0]
    python bench/blind_read.py score OUT GRADES.jsonl [GRADES2.jsonl ...]

`make` draws three groups from a finished run folder and shuffles them into one file a reader grades
without knowing which row came from where:
- every synthetic edge case the run kept (curated.parquet, `source` synthetic:*);
- `--curated` real rows of curated.parquet, at random;
- `--pool` rows of the raw pool at random (the holdout step's kept rows: ingested, held-out rows out,
  nothing curated yet), none of them already drawn as a curated row.
OUT/sample.md holds the rows under opaque labels (r001, r002, ...); OUT/key.json says which label is which
group and row id. The reader sees only sample.md and writes one JSON line per label,
`{"label": "r001", "keep": true, "reason": "..."}`.

`score` joins the grades with the key and prints one JSON line per figure: each group's keepable share
with its 95% Wilson interval, curated minus pool with a 95% bootstrap interval (independent samples),
the edge cases by kind, and, with two readers, their agreement (Cohen's kappa). A row graded by several
readers counts as keepable when most of them keep it (a tie is not kept).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

MAX_CHARS = 2500  # a turn longer than this is shown cut, with the count of what is left out


def _render(label: str, messages: list[dict]) -> str:
    out = [f"## {label}", ""]
    for m in messages:
        text = m["content"] or ""
        more = len(text) - MAX_CHARS
        shown = text[:MAX_CHARS] + (f"\n[... {more} more characters not shown]" if more > 0 else "")
        out += [f"**{m['role']}:**", "", "```text", shown.replace("```", "'''"), "```", ""]
    return "\n".join(out)


def make(run: Path, out: Path, n_curated: int, n_pool: int, seed: int) -> None:
    curated = pl.read_parquet(run / "curated.parquet")
    synthetic = curated.filter(pl.col("source").str.starts_with("synthetic"))
    real = curated.filter(~pl.col("source").str.starts_with("synthetic"))
    pool = pl.read_parquet(next((run / "steps").glob("*-holdout")) / "kept.parquet")
    rng = np.random.default_rng(seed)
    real = real[np.sort(rng.choice(real.height, size=min(n_curated, real.height), replace=False)).tolist()]
    pool = pool.filter(~pl.col("id").is_in(real["id"].implode()))
    pool = pool[np.sort(rng.choice(pool.height, size=min(n_pool, pool.height), replace=False)).tolist()]
    rows = ([("edge_case", r["id"], r.get("edge_kind"), r["messages"]) for r in synthetic.iter_rows(named=True)]
            + [("curated", r["id"], None, r["messages"]) for r in real.iter_rows(named=True)]
            + [("pool", r["id"], None, r["messages"]) for r in pool.iter_rows(named=True)])
    order = rng.permutation(len(rows))
    out.mkdir(parents=True, exist_ok=True)
    key, parts = {}, []
    for i, j in enumerate(order, 1):
        group, rid, kind, messages = rows[j]
        label = f"r{i:03d}"
        key[label] = {"group": group, "id": rid, "edge_kind": kind}
        parts.append(_render(label, messages))
    (out / "sample.md").write_text("\n\n".join(parts) + "\n")
    (out / "key.json").write_text(json.dumps({"run": str(run), "seed": seed, "rows": key}, indent=1))
    print(json.dumps({"sample": str(out / "sample.md"), "rows": len(rows),
                      "groups": Counter(r[0] for r in rows)}))


def _share(keep: list[bool]) -> dict:
    k, n = int(sum(keep)), len(keep)
    ci = binomtest(k, n).proportion_ci(method="wilson") if n else None
    return {"keepable": k, "read": n, "share": round(k / n, 3) if n else None,
            "ci95": [round(ci.low, 3), round(ci.high, 3)] if ci else None}


def _difference(a: list[bool], b: list[bool], resamples: int = 10000, seed: int = 0) -> dict:
    x, y = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    reps = (rng.choice(x, (resamples, x.size)).mean(1) - rng.choice(y, (resamples, y.size)).mean(1))
    return {"difference": round(float(x.mean() - y.mean()), 3),
            "ci95": [round(float(np.quantile(reps, 0.025)), 3), round(float(np.quantile(reps, 0.975)), 3)]}


def score(out: Path, grade_files: list[Path]) -> None:
    key = json.loads((out / "key.json").read_text())["rows"]
    readers = []
    for path in grade_files:
        grades = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                g = json.loads(line)
                if g["label"] not in key:
                    sys.exit(f"{path}:{n}: label {g['label']!r} is not in the sample")
                grades[g["label"]] = bool(g["keep"])
        missing = sorted(set(key) - set(grades))
        if missing:
            sys.exit(f"{path}: {len(missing)} rows not graded, e.g. {missing[:5]}")
        readers.append(grades)
    votes = {label: sum(r[label] for r in readers) for label in key}
    keep = {label: 2 * v > len(readers) for label, v in votes.items()}
    groups: dict[str, list[bool]] = {}
    for label, info in key.items():
        groups.setdefault(info["group"], []).append(keep[label])
        if info["group"] == "edge_case":
            groups.setdefault(f"edge_case:{info['edge_kind']}", []).append(keep[label])
    common = {"readers": len(readers), "sample": str(out / "sample.md")}
    for group, values in sorted(groups.items()):
        emit(figure="blind_read_keepable", group=group, **_share(values), **common)
    if "curated" in groups and "pool" in groups:
        emit(figure="blind_read_curated_minus_pool", **_difference(groups["curated"], groups["pool"]), **common)
    if len(readers) == 2:
        labels = sorted(key)
        a, b = ([r[x] for x in labels] for r in readers)
        emit(figure="blind_read_agreement", agree=sum(x == y for x, y in zip(a, b)), read=len(labels),
             kappa=round(float(cohen_kappa_score(a, b)), 3), **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("run", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--curated", type=int, default=40)
    m.add_argument("--pool", type=int, default=40)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score")
    s.add_argument("out", type=Path)
    s.add_argument("grades", type=Path, nargs="+")
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.run, args.out, args.curated, args.pool, args.seed)
    else:
        score(args.out, args.grades)


if __name__ == "__main__":
    main()
