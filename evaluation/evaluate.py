"""`evaluate:` for a single run: the trained adapter against its base model on the held-out set.

Writes out_dir/eval.json (figures with intervals, paired differences, slices) and
out_dir/report.md; per-row scores go to out_dir/eval/ (base.parquet, adapter.parquet). Then
out_dir/eval.DONE, curation.store's marker keyed by the adapter, the held-out rows and the settings: a
rerun with the same key reads eval.json back. It is named because the folder holds other work (a pond
run's holds curation and training).
"""
from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import polars as pl

from curation import store
from curation.store import frame_hash
from evaluation.bootstrap import bootstrap_ci, paired_difference_ci
from evaluation.config import EvaluateConfig
from evaluation.files import EVAL, EVAL_DONE, REPORT, SCORES
from evaluation.generation import adapter_fingerprint
from evaluation.loss_memo import memo_dir
from evaluation.report import METRIC_INFO, metric_matrix, slice_masks
from evaluation.scoring import load_heldout, make_judges, prepare_heldout, score_model, summarise
from synthesis.cache import CACHE_FILE
from synthesis.teachers import Teachers
from training.config import TrainConfig

# the files evaluate_run writes into the folder it is handed


def evaluate_run(out_dir: Path, adapter_dir: Path, heldout: pl.DataFrame | str | Path | None,
                 config: EvaluateConfig, train_config: TrainConfig, *, teachers: Teachers | None = None,
                 cache_dir: Path | None = None, progress: Callable | None = None,
                 heldout_source: str | None = None,
                 base_dir: Path | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Score base and base + adapter on the held-out set; the judge compares them if configured.

    heldout: records, a file path, or None to read `config.heldout` (`run:` = inside out_dir).
    teachers: the run's teachers (synthesis.teachers); the judge is served only while it judges.
    """
    from training.model import resolve_student, set_threads

    out_dir = Path(out_dir)
    if heldout is None or isinstance(heldout, (str, Path)):
        heldout, where = load_heldout(str(heldout or config.heldout), run_dir=out_dir)
        heldout_source = heldout_source or where
    held = prepare_heldout(heldout, config)
    student = resolve_student(train_config.student, cache_dir)
    max_seq_len = config.max_seq_len or train_config.max_seq_len
    # a rerun with the same adapter, rows and settings finds its finished evaluation
    key = {"adapter": adapter_fingerprint(Path(adapter_dir)), "heldout_hash": frame_hash(held), "student": str(student),
           "evaluate": config.model_dump(mode="json"), "max_seq_len": max_seq_len, "method": train_config.method,
           "compute_dtype": train_config.compute_dtype}
    done = _finished(out_dir, key)
    if done is not None:
        log("evaluation: finished earlier with this adapter and these rows, reused")
        return done
    set_threads(train_config.threads)
    ask, grade = make_judges(config, teachers, out_dir / CACHE_FILE, progress)
    common = dict(method=train_config.method, compute_dtype=train_config.compute_dtype, heldout=held, config=config,
                  max_seq_len=max_seq_len, cache_dir=cache_dir, progress=progress, memo=memo_dir(out_dir))
    teachers = teachers or Teachers()
    with teachers.serving(config.judge) if config.n_generate else contextlib.nullcontext():
        base = score_model(student, grade=grade, **common)
        compare = held["reference"].to_list() if config.judge_against == "reference" else base["answer"].to_list()
        tuned = score_model(student, adapter_dir=Path(adapter_dir), compare_answers=compare, ask=ask, grade=grade,
                            **common)
    (out_dir / SCORES).mkdir(parents=True, exist_ok=True)
    base.write_parquet(out_dir / SCORES / "base.parquet")
    tuned.write_parquet(out_dir / SCORES / "adapter.parquet")

    kw = {"resamples": config.bootstrap_resamples, "confidence": config.confidence}
    result: dict = {"heldout_source": heldout_source or "the given held-out frame", "heldout_rows": held.height,
                    "heldout_hash": key["heldout_hash"], "adapter_dir": str(adapter_dir), "student": str(student),
                    "base_model": summarise(base), "adapter": summarise(tuned), "intervals": {},
                    "evaluate": config.model_dump(mode="json"), "key": key}
    for metric in METRIC_INFO:
        t = metric_matrix([tuned], metric)
        if t is None:
            continue
        entry = {"adapter": bootstrap_ci(*t, **kw).to_dict()}
        b = metric_matrix([base], metric)
        if b is not None:
            entry["base_model"] = bootstrap_ci(*b, **kw).to_dict()
            entry["adapter_minus_base"] = paired_difference_ci(t[0], b[0], t[1], b[1], **kw).to_dict()
        result["intervals"][metric] = entry
    if config.benchmark:
        result["benchmark"] = _benchmark(out_dir, student, Path(adapter_dir), config, train_config, teachers,
                                         cache_dir, base_dir, progress, log)
    if config.reference:
        result["reference"] = _reference(out_dir, student, Path(adapter_dir), config, train_config, cache_dir,
                                         base_dir, progress)
    result["slices"] = {}
    for group, masks in slice_masks(held, ["structured", "answer_length"]).items():
        for label, mask in masks.items():
            t, b = metric_matrix([tuned], "heldout_loss", mask), metric_matrix([base], "heldout_loss", mask)
            if t is None or b is None:
                result["slices"][label] = {"rows": int(mask.sum())}
                continue
            result["slices"][label] = {"rows": int(mask.sum()), "base_model": bootstrap_ci(*b, **kw).to_dict(),
                                       "adapter": bootstrap_ci(*t, **kw).to_dict(),
                                       "adapter_minus_base": paired_difference_ci(t[0], b[0], t[1], b[1], **kw).to_dict()}
    # no timings in eval.json (they are in the manifest): the same adapter and held-out rows give the
    # same bytes, so a rerun after a kill can be checked against an uninterrupted run
    store.write_text(json.dumps(result, indent=1, sort_keys=True, default=str), out_dir / EVAL)
    _write_eval_report(out_dir / REPORT, result)
    store.mark_finished(out_dir, store.key_of(key), name=EVAL_DONE)  # last: it vouches for everything above
    return result


def _finished(out_dir: Path, key: dict) -> dict | None:
    """eval.json of an evaluation finished here with the same key; else None."""
    if not store.finished(out_dir, store.key_of(key), name=EVAL_DONE):
        return None
    return store.read_json(out_dir / EVAL) or None


def _benchmark(out_dir: Path, student: Path, adapter_dir: Path, config: EvaluateConfig, train_config: TrainConfig,
               teachers, cache_dir, base_dir, progress, log) -> dict:
    """The adapter and the base model answer the benchmark; the judge or IFEval's checkers score both."""
    from evaluation.benchmark_eval import benchmark_figures
    from evaluation.benchmarks import load_benchmark
    from evaluation.generation import answerer
    from training.model import load_tokenizer

    questions = load_benchmark(config.benchmark, base_dir, per_category=config.benchmark_per_category,
                               sample=config.benchmark_sample)
    cache_path = out_dir / CACHE_FILE
    tok = load_tokenizer(student)

    def make_answerer(models):
        return answerer(student, models, backend=config.generation, method=train_config.method,
                        compute_dtype=train_config.compute_dtype, max_new_tokens=config.max_new_tokens,
                        batch_size=config.batch_size, cache_path=cache_path, cache_dir=cache_dir, progress=progress,
                        log=log)

    return benchmark_figures(out_dir / "benchmark", questions, {"base": None, "adapter": adapter_dir},
                             {"base": ["base"], "adapter": ["adapter"]}, "base", config, answerer=make_answerer,
                             pairs=[("adapter", "base")], teachers=teachers, cache_path=cache_path,
                             count_tokens=lambda a: len(tok(a, add_special_tokens=False)["input_ids"]),
                             resamples=config.bootstrap_resamples, confidence=config.confidence, track=progress,
                             log=log)


def _reference(out_dir: Path, student: Path, adapter_dir: Path, config: EvaluateConfig, train_config: TrainConfig,
               cache_dir, base_dir, progress) -> dict:
    """Base and adapter loss on the reference answers, paired on rows; how the rows fit the length limit."""
    from evaluation.reference import fit, load_reference, loss_matrix, reference_losses
    from training.model import load_tokenizer

    ref = load_reference(config.reference, base_dir, rows=config.reference_rows)
    kw = dict(batch_size=config.batch_size, cache_dir=cache_dir, progress=progress, memo=memo_dir(out_dir))
    frames = {name: reference_losses(student, train_config.method, train_config.compute_dtype, ref,
                                     config.reference_max_seq_len, adapter_dir=a, **kw)
              for name, a in (("base", None), ("adapter", adapter_dir))}
    (out_dir / SCORES).mkdir(parents=True, exist_ok=True)
    for name, f in frames.items():
        f.write_parquet(out_dir / SCORES / f"reference-{name}.parquet")
    ci = {"resamples": config.bootstrap_resamples, "confidence": config.confidence}
    (xb, wb), (xa, wa) = loss_matrix([frames["base"]]), loss_matrix([frames["adapter"]])
    return {"name": config.reference, "fit": fit(ref, load_tokenizer(student), config.reference_max_seq_len),
            "training_rows_overlapping": _overlap(out_dir, config, base_dir),
            "base_model": bootstrap_ci(xb, wb, **ci).to_dict(), "adapter": bootstrap_ci(xa, wa, **ci).to_dict(),
            "adapter_minus_base": paired_difference_ci(xa, xb, wa, wb, **ci).to_dict()}


def _overlap(out_dir: Path, config: EvaluateConfig, base_dir) -> int | None:
    """Rows of the run's training set (curated.parquet) sharing a 13-word n-gram with any reference row: a single
    run trains on what curation kept, so a leak is counted here (an experiment removes such rows from every arm)."""
    from evaluation.arms import remove_overlap
    from evaluation.reference import load_reference

    curated = out_dir / "curated.parquet"
    if not curated.exists():
        return None
    return remove_overlap(pl.read_parquet(curated), load_reference(config.reference, base_dir))[1]


def _ci(c: dict, sign: bool = False) -> str:
    f = "{:+.4f}" if sign else "{:.4f}"
    return f"{f.format(c['mean'])} [{f.format(c['low'])}, {f.format(c['high'])}]"


def _write_eval_report(path: Path, r: dict) -> None:
    pct = f"{r['evaluate']['confidence']:.0%}"
    loss = r["intervals"]["heldout_loss"]
    d = loss["adapter_minus_base"]
    better = d["high"] < 0
    worse = d["low"] > 0
    verdict = ("lowered" if better else "raised" if worse else "did not clearly change")
    lines = ["# Evaluation", "",
             f"**The adapter {verdict} the held-out loss: {loss['base_model']['mean']:.4f} → "
             f"{loss['adapter']['mean']:.4f} (difference {d['mean']:+.4f}, {pct} CI {d['low']:+.4f} to "
             f"{d['high']:+.4f}; perplexity {math.exp(loss['base_model']['mean']):.2f} → "
             f"{math.exp(loss['adapter']['mean']):.2f}).**", "",
             f"Held-out set: {r['heldout_source']} — {r['heldout_rows']} rows; loss on the reference answers' "
             f"tokens only. Intervals: {pct} bootstrap over held-out rows, differences paired on rows.", "",
             f"| metric | base model | base + adapter | adapter − base [{pct} CI] |", "|---|---|---|---|"]
    for metric, e in r["intervals"].items():
        lines.append(f"| {METRIC_INFO[metric][2]} | {_ci(e['base_model']) if 'base_model' in e else '–'} | "
                     f"{_ci(e['adapter'])} | {_ci(e['adapter_minus_base'], True) if 'adapter_minus_base' in e else '–'} |")
    if "judge_win_rate" in r["adapter"]:
        a = r["adapter"]
        lines += ["", f"Judge ({r['evaluate']['judge']}, both orders asked, an inconsistent pair is a tie): the "
                      f"adapter's answers won {a['judge_win_rate']:.1%} against "
                      f"{'the base model' if r['evaluate']['judge_against'] == 'base' else 'the references'} "
                      f"over {a['judge_win_rate_rows']} prompts (ties count half)."]
    lines += ["", "## Slices (held-out loss)", "", f"| slice | rows | base model | base + adapter | adapter − base |",
              "|---|---|---|---|---|"]
    for label, s in r["slices"].items():
        if "adapter" in s:
            lines.append(f"| {label} | {s['rows']} | {_ci(s['base_model'])} | {_ci(s['adapter'])} | "
                         f"{_ci(s['adapter_minus_base'], True)} |")
        else:
            lines.append(f"| {label} | {s['rows']} | – | – | no scored rows |")
    if r.get("reference"):
        ref = r["reference"]
        f = ref["fit"]
        lines += ["", f"## Reference loss: {ref['name']}", "",
                  f"Loss on {f['rows']} strong answers nobody here wrote (assistant tokens only; lower is better); "
                  f"{f['truncated']} rows longer than {f['max_seq_len']} tokens scored on their start, "
                  f"{f['unscorable']} with no answer token inside it not scored." +
                  ("" if ref.get("training_rows_overlapping") is None else
                   f" {ref['training_rows_overlapping']} training rows share a 13-word n-gram with a reference row "
                   "(add the reference file to the `decontaminate` step's `against` to remove them)."), "",
                  "| base model | base + adapter | adapter − base |", "|---|---|---|",
                  f"| {_ci(ref['base_model'])} | {_ci(ref['adapter'])} | {_ci(ref['adapter_minus_base'], True)} |"]
    if r.get("benchmark"):
        lines += _benchmark_lines(r)
    store.write_text("\n".join(lines) + "\n", path)


def _benchmark_lines(r: dict) -> list[str]:
    from evaluation.failures import failure_lines
    from evaluation.ifeval import IFEVAL, ifeval_lines

    b = r["benchmark"]
    pct = f"{r['evaluate']['confidence']:.0%}"
    if b["name"] == IFEVAL:
        lines = ifeval_lines(b, "base", pct)
    else:
        g, base = b["groups"]["adapter"], b["groups"]["base"]
        lines = ["", f"## Benchmark: {b['name']}", "",
                 f"{b['questions']} questions, turns {', '.join(str(t + 1) for t in b['turns'])}, judge "
                 f"`{r['evaluate']['judge']}`.", "", "| | base model | base + adapter | adapter − base |", "|---|---|---|---|"]
        if "grade" in g:
            lines.append(f"| grade 1-10 | {_ci(base['grade'])} | {_ci(g['grade'])} | {_ci(g['minus']['base'], True)} |")
        if "win_rate" in g:
            lines.append(f"| adapter's win rate vs base (ties half) | – | {_ci(g['win_rate'])} | – |")
        for c, m in g.get("by_category", {}).items():
            d = g.get("minus_by_category", {}).get(c)
            lines.append(f"| {c} | {_ci(base['by_category'][c]) if c in base.get('by_category', {}) else '–'} | "
                         f"{_ci(m)} | {_ci(d, True) if d else '–'} |")
    return lines + (failure_lines(b["failures"], "base", pct) if b.get("failures") else [])
