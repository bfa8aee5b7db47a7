"""Turn per-row scores of every arm x seed into experiment.json, report.md and plot.png."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from evaluation.bootstrap import Interval, bootstrap_ci, paired_difference_ci
from evaluation.scoring import summarise

# metric -> (per-row value column(s), lower is better, label)
METRIC_INFO = {
    "heldout_loss": ("nll", True, "held-out loss (answer tokens)"),
    "judge_win_rate": ("judge", False, "judge win rate vs the base model (ties = half)"),
    "judge_score": ("grade", False, "judge grade (1-10)"),
    "exact_match": ("exact_match", False, "exact match"),
    "token_f1": ("token_f1", False, "token F1"),
    # benchmark metrics come from evaluation.benchmark_eval, not from the held-out rows (no column)
    "benchmark_score": (None, False, "benchmark judge grade (1-10)"),
    "benchmark_win_rate": (None, False, "benchmark win rate vs the baseline arm (ties = half)"),
    # from evaluation.reference and evaluation.ifeval (their own rows: reference answers, IFEval prompts)
    "reference_loss": (None, True, "reference loss (strong answers' tokens)"),
    "ifeval_prompt_strict": (None, False, "IFEval prompt-level strict accuracy (instructions the cap leaves fair)"),
    "ifeval_instruction_strict": (None, False, "IFEval instruction-level strict accuracy (fair instructions)"),
}


def metric_matrix(scores: list[pl.DataFrame], metric: str, mask: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """[seeds, rows] values and weights for `metric`; None if no seed has it."""
    if METRIC_INFO[metric][0] is None:
        return None
    vals, wts = [], []
    for s in scores:
        if metric == "heldout_loss":
            tokens = s["tokens"].to_numpy().astype(np.float64)
            v = np.divide(s["nll"].to_numpy(), tokens, out=np.full(tokens.shape, np.nan), where=tokens > 0)
            w = tokens
        else:
            v = s[METRIC_INFO[metric][0]].to_numpy().astype(np.float64)
            w = (~np.isnan(v)).astype(np.float64)
        if mask is not None:
            v, w = v[mask], w[mask]
        vals.append(v)
        wts.append(w)
    values, weights = np.vstack(vals), np.vstack(wts)
    if values.shape[1] == 0 or not (weights.sum(axis=1) > 0).all():
        return None
    return values, weights


def _ci(m, resamples: int, confidence: float) -> Interval:
    return bootstrap_ci(m[0], m[1], resamples=resamples, confidence=confidence)


def slice_masks(heldout: pl.DataFrame, slices: list[str]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    if "structured" in slices:
        s = heldout["structured"].to_numpy()
        out["structured"] = {"structured (code/lists/tables)": s, "plain": ~s}
    if "answer_length" in slices:
        words = heldout["answer_words"].to_numpy()
        med = float(np.median(words))
        out["answer_length"] = {f"long answer (> {med:g} words)": words > med,
                                f"short answer (<= {med:g} words)": words <= med}
    if "turns" in slices:
        t = heldout["turns"].to_numpy()
        out["turns"] = {"multi-turn": t > 1, "single-turn": t <= 1}
    return out


def aggregate(arms: list[dict], base_scores: pl.DataFrame, heldout: pl.DataFrame, *, metric: str,
              baseline: str, slices: list[str], resamples: int, confidence: float) -> dict:
    """The content of experiment.json. `arms`: name, data, profile, plan, seeds=[{seed, train, scores}]."""
    # A metric counts if some arm has it on every seed (the base model has no judge score vs itself).
    metrics = [m for m in METRIC_INFO
               if any(metric_matrix([s["scores"] for s in a["seeds"]], m) is not None for a in arms)]
    base_ci = {m: _ci(metric_matrix([base_scores], m), resamples, confidence).to_dict()
               for m in metrics if metric_matrix([base_scores], m) is not None}
    by_name = {a["name"]: a for a in arms}
    out_arms = []
    for arm in arms:
        scores = [s["scores"] for s in arm["seeds"]]
        entry = {k: arm[k] for k in ("name", "data", "profile", "plan")}
        entry["rows"] = arm["rows"]
        entry["seeds"] = [{"seed": s["seed"], "train": s["train"], "metrics": summarise(s["scores"])}
                          for s in arm["seeds"]]
        entry["train_seconds_mean"] = float(np.mean([s["train"]["train_seconds"] for s in arm["seeds"]]))
        entry["answer_tokens_seen_mean"] = float(np.mean([s["train"]["answer_tokens_seen"] for s in arm["seeds"]]))
        entry["steps_mean"] = float(np.mean([s["train"]["steps"] for s in arm["seeds"]]))
        entry["metrics"] = {}
        entry["vs_" + baseline] = {}
        entry["vs_base_model"] = {}
        base_scores_b = [s["scores"] for s in by_name[baseline]["seeds"]]
        for m in metrics:
            mm = metric_matrix(scores, m)
            if mm is None:
                continue
            ci = _ci(mm, resamples, confidence).to_dict()
            ci["per_seed"] = [float(x) for x in _per_seed(mm)]
            entry["metrics"][m] = ci
            if m == "heldout_loss":
                entry["metrics"]["perplexity"] = {k: math.exp(v) for k, v in ci.items() if k in ("mean", "low", "high")}
            if arm["name"] != baseline and (bm := metric_matrix(base_scores_b, m)) is not None:
                entry["vs_" + baseline][m] = paired_difference_ci(
                    mm[0], bm[0], mm[1], bm[1], resamples=resamples, confidence=confidence).to_dict()
            if (b0 := metric_matrix([base_scores], m)) is not None:
                entry["vs_base_model"][m] = paired_difference_ci(
                    mm[0], b0[0], mm[1], b0[1], resamples=resamples, confidence=confidence).to_dict()
        out_arms.append(entry)

    out_slices = {}
    metric_held = metric if METRIC_INFO[metric][0] is not None else "heldout_loss"  # slices are of held-out rows
    for group, masks in slice_masks(heldout, slices).items():
        out_slices[group] = {}
        for label, mask in masks.items():
            rows = {"rows": int(mask.sum())}
            if mask.sum() == 0:
                out_slices[group][label] = rows
                continue
            b0 = metric_matrix([base_scores], metric_held, mask)
            rows["base_model"] = _ci(b0, resamples, confidence).to_dict() if b0 is not None else None
            base_m = metric_matrix([s["scores"] for s in by_name[baseline]["seeds"]], metric_held, mask)
            for arm in arms:
                mm = metric_matrix([s["scores"] for s in arm["seeds"]], metric_held, mask)
                if mm is None:
                    continue
                cell = {"metric": _ci(mm, resamples, confidence).to_dict()}
                if arm["name"] != baseline and base_m is not None:
                    cell["vs_" + baseline] = paired_difference_ci(
                        mm[0], base_m[0], mm[1], base_m[1], resamples=resamples, confidence=confidence).to_dict()
                rows[arm["name"]] = cell
            out_slices[group][label] = rows

    _synthetic_effect(out_arms, arms, metrics, resamples, confidence)
    return {"metric": metric, "lower_is_better": METRIC_INFO[metric][1], "baseline": baseline,
            "confidence": confidence, "bootstrap_resamples": resamples, "metrics_available": metrics,
            "heldout_rows": heldout.height, "base_model": base_ci, "arms": out_arms, "slices": out_slices,
            "slice_metric": metric_held, "verdict": verdict(out_arms, metric, baseline, confidence)}


def add_benchmark(summary: dict, bench: dict) -> dict:
    """Put the benchmark figures (evaluation.benchmark_eval.summarise_benchmark) beside the held-out ones:
    each arm's `benchmark_score` and `benchmark_win_rate` with their differences, then the verdict again."""
    from evaluation.ifeval import IFEVAL

    if bench.get("name") == IFEVAL:
        return add_ifeval(summary, bench)
    baseline = summary["baseline"]
    groups = bench["groups"]
    for a in summary["arms"]:
        g = groups.get(a["name"])
        if not g:
            continue
        if "grade" in g:
            a["metrics"]["benchmark_score"] = g["grade"]
            if a["name"] != baseline and baseline in g["minus"]:
                a["vs_" + baseline]["benchmark_score"] = g["minus"][baseline]
            if "base" in g["minus"]:
                a["vs_base_model"]["benchmark_score"] = g["minus"]["base"]
        if "win_rate" in g:
            w = g["win_rate"]
            a["metrics"]["benchmark_win_rate"] = w
            # the comparison is built in: 0.5 is "as good as the baseline"
            a["vs_" + baseline]["benchmark_win_rate"] = {**w, **{k: w[k] - 0.5 for k in ("mean", "low", "high")}}
    if "base" in groups and "grade" in groups["base"]:
        summary["base_model"]["benchmark_score"] = groups["base"]["grade"]
    for m in ("benchmark_score", "benchmark_win_rate"):
        if any(m in a["metrics"] for a in summary["arms"]) and m not in summary["metrics_available"]:
            summary["metrics_available"].append(m)
    summary["benchmark"] = bench
    summary["verdict"] = verdict(summary["arms"], summary["metric"], baseline, summary["confidence"])
    return summary


def _put_metric(summary: dict, metric: str, per_arm: dict[str, dict], vs_baseline: dict[str, dict],
                vs_base: dict[str, dict], base: dict | None) -> None:
    """A metric measured outside the held-out rows, beside the held-out ones; then the verdict again."""
    for a in summary["arms"]:
        if a["name"] in per_arm:
            a["metrics"][metric] = per_arm[a["name"]]
        if a["name"] in vs_baseline:
            a["vs_" + summary["baseline"]][metric] = vs_baseline[a["name"]]
        if a["name"] in vs_base:
            a["vs_base_model"][metric] = vs_base[a["name"]]
    if base is not None:
        summary["base_model"][metric] = base
    if per_arm and metric not in summary["metrics_available"]:
        summary["metrics_available"].append(metric)
    summary["verdict"] = verdict(summary["arms"], summary["metric"], summary["baseline"], summary["confidence"])


def add_reference(summary: dict, ref: dict) -> dict:
    """Each arm's loss on the reference answers (evaluation.reference), token-weighted over rows and seeds, with
    its difference from the baseline arm and from the base model, paired on rows."""
    from evaluation.reference import loss_matrix

    kw = {"resamples": summary["bootstrap_resamples"], "confidence": summary["confidence"]}
    mats = {name: loss_matrix(frames) for name, frames in ref["arms"].items()}
    base = loss_matrix([ref["base"]])
    baseline = summary["baseline"]
    per_arm = {}
    for n, m in mats.items():
        ci = bootstrap_ci(*m, **kw).to_dict()
        per_arm[n] = {**ci, "per_seed": [float(x) for x in _per_seed(m)]}
    vs_baseline = {n: paired_difference_ci(m[0], mats[baseline][0], m[1], mats[baseline][1], **kw).to_dict()
                   for n, m in mats.items() if n != baseline}
    vs_base = {n: paired_difference_ci(m[0], base[0], m[1], base[1], **kw).to_dict() for n, m in mats.items()}
    _put_metric(summary, "reference_loss", per_arm, vs_baseline, vs_base, bootstrap_ci(*base, **kw).to_dict())
    summary["reference"] = {"name": ref["name"], "fit": ref["fit"]}
    return summary


def add_ifeval(summary: dict, bench: dict) -> dict:
    """IFEval's accuracies on the instructions the cap leaves fair, beside the held-out metrics."""
    groups, baseline = bench["groups"], summary["baseline"]
    for metric, level in (("ifeval_prompt_strict", "prompt_strict"), ("ifeval_instruction_strict", "instruction_strict")):
        arms = [a["name"] for a in summary["arms"] if a["name"] in groups and level in groups[a["name"]]["fair"]]
        _put_metric(summary, metric, {n: groups[n]["fair"][level] for n in arms},
                    {n: groups[n]["minus_fair"][baseline][level] for n in arms if n != baseline and baseline in groups},
                    {n: groups[n]["minus_fair"]["base"][level] for n in arms if "base" in groups},
                    groups.get("base", {}).get("fair", {}).get(level))
    summary["benchmark"] = bench
    return summary


def goal_sentence(summary: dict, arm: str = "curated") -> str | None:
    """Does `arm` beat every other arm on the benchmark grade (interval of the paired difference above
    zero), and is it no worse than random_n on held-out loss? One plain sentence either way."""
    bench = summary.get("benchmark") or {}
    g = (bench.get("groups") or {}).get(arm)
    if not g or "minus" not in g:
        return None
    pct = f"{summary['confidence']:.0%}"
    parts, wins = [], []
    for other, d in g["minus"].items():
        if other == "base":
            continue
        won = d["low"] > 0
        wins.append(won)
        parts.append(f"`{arm}` − `{other}` = {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                     f" ({'above zero' if won else 'includes zero' if d['high'] >= 0 else 'below zero'})")
    loss = ""
    arms = {a["name"]: a for a in summary["arms"]}
    if "random_n" in arms and arm in arms and "heldout_loss" in arms[arm]["metrics"]:
        la, lr = arms[arm]["metrics"]["heldout_loss"]["mean"], arms["random_n"]["metrics"]["heldout_loss"]["mean"]
        loss = f"; held-out loss {la:.4f} vs `random_n` {lr:.4f}"
    verdict_s = ("beat every other arm" if all(wins) else "did not beat every other arm")
    return (f"On the benchmark judge grade, `{arm}` {verdict_s} ({pct} paired intervals): " + "; ".join(parts) + loss + ".")


def _per_seed(m) -> list[float]:
    v, w = m
    return list((w * np.nan_to_num(v)).sum(axis=1) / w.sum(axis=1))


def _synthetic_effect(out_arms: list[dict], arms: list[dict], metrics: list[str], resamples: int,
                      confidence: float) -> None:
    """On a `curated_plus_synthetic` arm, when a `curated` arm is there too: its paired difference from
    it on every held-out metric (`synthetic_effect`), the one comparison that isolates the synthetic rows."""
    by_data = {a["data"]: a for a in arms}
    if "curated_plus_synthetic" not in by_data or "curated" not in by_data:
        return
    plus, real = by_data["curated_plus_synthetic"], by_data["curated"]
    entry = next(e for e in out_arms if e["name"] == plus["name"])
    effect = {"against": real["name"], "synthetic_rows": entry["rows"] - next(
        e["rows"] for e in out_arms if e["name"] == real["name"])}
    for m in metrics:
        mm = metric_matrix([s["scores"] for s in plus["seeds"]], m)
        rm = metric_matrix([s["scores"] for s in real["seeds"]], m)
        if mm is not None and rm is not None:
            effect[m] = paired_difference_ci(mm[0], rm[0], mm[1], rm[1], resamples=resamples,
                                             confidence=confidence).to_dict()
    entry["synthetic_effect"] = effect


def synthetic_sentence(arms: list[dict], metric: str, confidence: float) -> str | None:
    """Did the synthetic rows help: `curated_plus_synthetic` minus `curated` on the headline metric."""
    entry = next((a for a in arms if "synthetic_effect" in a), None)
    if entry is None:
        return None
    effect = entry["synthetic_effect"]
    m = metric if metric in effect else "heldout_loss" if "heldout_loss" in effect else None
    if effect["synthetic_rows"] <= 0:
        return (f"Synthetic rows: none reached the curated set, so `{entry['name']}` trained on the same rows as "
                f"`{effect['against']}` and says nothing about edge cases.")
    if m is None:
        return None
    d, lower = effect[m], METRIC_INFO[m][1]
    if _excl(d):
        better = (d["high"] < 0) == lower
        outcome = "helped" if better else "hurt"
    else:
        outcome = "were not shown to help (the interval includes zero)"
    return (f"Synthetic rows: `{entry['name']}` ({effect['synthetic_rows']} synthetic rows added) minus "
            f"`{effect['against']}` on {METRIC_INFO[m][2]} is {d['mean']:+.4f} ({confidence:.0%} CI {d['low']:+.4f} "
            f"to {d['high']:+.4f}); the edge cases {outcome}.")


def verdict(arms: list[dict], metric: str, baseline: str, confidence: float) -> dict:
    """Which arm won on the headline metric, and whether its interval against the baseline excludes 0;
    with a `curated_plus_synthetic` arm, a second sentence says whether the synthetic rows helped."""
    out = _winner(arms, metric, baseline, confidence)
    if (extra := synthetic_sentence(arms, metric, confidence)) is not None:
        out = {**out, "synthetic": extra, "sentence": out["sentence"] + " " + extra}
    return out


def _winner(arms: list[dict], metric: str, baseline: str, confidence: float) -> dict:
    lower = METRIC_INFO[metric][1]
    scored = [a for a in arms if metric in a["metrics"]]
    if not scored:
        return {"winner": None, "sentence": f"No arm has the metric {metric}."}
    best = (min if lower else max)(scored, key=lambda a: a["metrics"][metric]["mean"])
    pct = f"{confidence:.0%}"
    label = METRIC_INFO[metric][2]
    means = [a["metrics"][metric]["mean"] for a in scored]
    if max(means) - min(means) <= 1e-9 * max(1.0, abs(means[0])):
        return {"winner": None, "excludes_zero": False,
                "sentence": f"No arm won: every arm scored {means[0]:.4f} on {label}; no adapter changed the "
                            f"model's predictions on the held-out set."}
    m = best["metrics"][metric]
    head = (f"`{best['name']}` won on {label}: {m['mean']:.4f} ({pct} CI {m['low']:.4f} to {m['high']:.4f}), "
            f"averaged over {len(best['seeds'])} seed(s).")
    if best["name"] == baseline:
        others = [a for a in scored if a["name"] != baseline and metric in a["vs_" + baseline]]
        if not others:
            return {"winner": best["name"], "excludes_zero": None, "sentence": head}
        runner = (min if lower else max)(others, key=lambda a: a["metrics"][metric]["mean"])
        d = runner["vs_" + baseline][metric]
        tail = (f" The runner-up `{runner['name']}` minus `{baseline}` is {d['mean']:+.4f} ({pct} CI "
                f"{d['low']:+.4f} to {d['high']:+.4f}); the interval "
                f"{'excludes' if _excl(d) else 'includes'} zero, so `{baseline}` "
                f"{'really did beat' if _excl(d) else 'was not shown to beat'} it.")
        return {"winner": best["name"], "excludes_zero": _excl(d), "sentence": head + tail}
    d = best["vs_" + baseline][metric]
    tail = (f" Against `{baseline}` the difference is {d['mean']:+.4f} ({pct} CI {d['low']:+.4f} to "
            f"{d['high']:+.4f}); the interval {'excludes' if _excl(d) else 'includes'} zero, so the win "
            f"{'holds at this confidence' if _excl(d) else 'could be noise'}.")
    return {"winner": best["name"], "excludes_zero": _excl(d), "sentence": head + tail}


def _excl(d: dict) -> bool:
    return d["low"] > 0 or d["high"] < 0


def _fmt_ci(c: dict | None, digits: int = 4, sign: bool = False) -> str:
    if not c:
        return "–"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(c['mean'])} [{f.format(c['low'])}, {f.format(c['high'])}]"


def _human_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def write_report(path: Path, summary: dict, *, title: str, heldout_source: str, notes: list[str]) -> Path:
    """report.md: the table at a glance, the data sizes, the verdict sentence and the slices."""
    metric, baseline = summary["metric"], summary["baseline"]
    pct = f"{summary['confidence']:.0%}"
    extra = [m for m in summary["metrics_available"] if m != metric]
    lines = [f"# {title}", "", f"**{summary['verdict']['sentence']}**", ""]
    scored = "" if "heldout_loss" in summary["metrics_available"] else " (no arm scored on it: score_heldout false)"
    lines += [f"Held-out set: {heldout_source} — {summary['heldout_rows']} rows{scored}. Intervals: {pct} two-level "
              f"bootstrap over the scored rows (held-out rows; for reference_loss the reference rows) and seeds "
              f"({summary['bootstrap_resamples']} resamples); differences are paired on those rows.", ""]
    head = ["arm", "data", "rows", "steps", "epochs", "answer tokens seen", "train time",
            f"{metric} [{pct} CI]", f"Δ vs {baseline} [{pct} CI]"] + extra
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = summary["base_model"]
    if metric in base:
        cells = ["base model (no training)", "–", "–", "–", "–", "–", "–", _fmt_ci(base[metric]), "–"]
        lines.append("| " + " | ".join(cells + [_fmt_ci(base.get(m)) for m in extra]) + " |")
    for a in summary["arms"]:
        rows = a["rows"]
        rows_s = f"{rows}" if isinstance(rows, int) else f"{int(np.mean(rows))} (per seed)"
        trainable = a["profile"].get("trainable_rows", a["profile"]["rows"])
        epochs = a["steps_mean"] * a["plan"].get("rows_per_step", 0) / max(1, trainable)
        steps_s, epochs_s = f"{a['steps_mean']:.0f}", f"{epochs:.2f}"
        if a["plan"].get("dpo"):  # curated+dpo: the SFT arm's steps, then DPO's over its pairs (rows_s)
            sft, dpo = (float(np.mean([s["train"][k]["steps"] for s in a["seeds"]])) for k in ("sft", "dpo"))
            steps_s = f"{sft:.0f} SFT + {dpo:.0f} DPO"
            epochs_s = f"{dpo * a['plan']['rows_per_step'] / max(1, a['profile']['rows']):.2f} over the pairs"
        cells = [f"`{a['name']}`", a["data"], rows_s, steps_s, epochs_s,
                 f"{a['answer_tokens_seen_mean']:,.0f}", _human_seconds(a["train_seconds_mean"]),
                 _fmt_ci(a["metrics"].get(metric)),
                 _fmt_ci(a["vs_" + baseline].get(metric), sign=True) if a["name"] != baseline else "(baseline)"]
        cells += [_fmt_ci(a["metrics"].get(m)) for m in extra]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{'Lower' if summary['lower_is_better'] else 'Higher'} is better for {metric}. "
              f"Perplexity = exp(loss).", ""]
    lines += ["## Data", "", "| arm | rows | rows with an answer within max_seq_len | answer chars (mean) | "
              "answer tokens / row (trained) | structured answers |", "|---|---|---|---|---|---|"]
    for a in summary["arms"]:
        p = a["profile"]
        lines.append(f"| `{a['name']}` | {p['rows']} | {p.get('trainable_rows', '–')} | {p['answer_chars_mean']:.0f} | "
                     f"{p.get('answer_tokens_per_row', float('nan')):.0f} | {p['structured_share']:.0%} |")
    if summary["slices"]:
        lines += ["", "## Slices", "", f"{summary.get('slice_metric', metric)} on parts of the held-out set, with each "
                  f"arm's difference from "
                  f"`{baseline}`. A win that appears only in the slice curation favoured reflects the selection, "
                  "not general quality.", ""]
        names = [a["name"] for a in summary["arms"]]
        lines += ["| slice | rows | base model | " + " | ".join(f"`{n}`" for n in names) + " |",
                  "|" + "---|" * (3 + len(names))]
        for group in summary["slices"].values():
            for label, cell in group.items():
                vals = []
                for n in names:
                    c = cell.get(n)
                    if not c:
                        vals.append("no scored rows")
                        continue
                    d = c.get("vs_" + baseline)
                    vals.append(f"{c['metric']['mean']:.4f}" + (f" (Δ {d['mean']:+.4f} [{d['low']:+.4f}, "
                                                                f"{d['high']:+.4f}])" if d else ""))
                b = cell.get("base_model")
                lines.append(f"| {label} | {cell['rows']} | {b['mean']:.4f} |" if b else f"| {label} | {cell['rows']} | – |")
                lines[-1] += " " + " | ".join(vals) + " |"
    if summary.get("reference"):
        f = summary["reference"]["fit"]
        lines += ["", f"## Reference loss: {summary['reference']['name']}", "",
                  f"`reference_loss` (in the table above) is each arm's loss on {f['rows']} strong answers nobody here "
                  f"wrote, assistant tokens only, paired on rows and seeds. {f['truncated']} rows longer than "
                  f"{f['max_seq_len']} tokens were scored on their start; {f['unscorable']} had no answer token "
                  "inside that limit and carry no weight."]
    if summary.get("benchmark"):
        lines += benchmark_lines(summary)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def benchmark_lines(summary: dict) -> list[str]:
    """The report's benchmark section: what was judged, each arm's grade and win rate, per category."""
    from evaluation.failures import failure_lines
    from evaluation.ifeval import IFEVAL, ifeval_lines

    b, baseline = summary["benchmark"], summary["baseline"]
    pct = f"{summary['confidence']:.0%}"
    failures = failure_lines(b["failures"], baseline, pct) if b.get("failures") else []
    if b.get("name") == IFEVAL:
        return ifeval_lines(b, baseline, pct) + ["", b.get("judged", "")] + failures
    groups = b["groups"]
    lines = ["", f"## Benchmark: {b.get('name', 'benchmark')}", "", b.get("judged", ""), ""]
    goal = goal_sentence(summary, summary["arms"][0]["name"])
    if goal:
        lines += [f"**{goal}**", ""]
    turns = [str(t) for t in b["turns"]]
    head = ["arm", f"grade 1-10 [{pct} CI]"] + [f"turn {int(t) + 1}" for t in turns] + \
        [f"grade − `{baseline}` [{pct} CI]", f"win rate vs `{baseline}` [{pct} CI]", "wins / ties / losses / failed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, g in groups.items():
        if "grade" not in g and "win_rate" not in g:
            continue
        d = g.get("minus", {}).get(baseline)
        p = g.get("pairs")
        cells = [f"`{name}`" if name != "base" else "base model (no training)", _fmt_ci(g.get("grade"), 2)]
        cells += [_fmt_ci(g.get("by_turn", {}).get(t), 2) for t in turns]
        cells += [_fmt_ci(d, 2, sign=True) if d and name != baseline else "–",
                  _fmt_ci(g.get("win_rate"), 3) if "win_rate" in g else "–",
                  f"{p['wins']} / {p['ties']} / {p['losses']} / {p['failed']}" if p else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    cats = b["categories"]
    names = [n for n, g in groups.items() if "by_category" in g]
    if cats and names:
        lines += ["", f"Per category (mean grade; in brackets each arm − `{baseline}`, {pct} CI paired on questions):",
                  "", "| category | " + " | ".join(f"`{n}`" for n in names) + " |", "|" + "---|" * (1 + len(names))]
        for c in cats:
            vals = []
            for n in names:
                m = groups[n]["by_category"].get(c)
                d = groups[n].get("minus_by_category", {}).get(c)
                vals.append("–" if not m else f"{m['mean']:.2f}" + (
                    f" ({d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}])" if d else ""))
            lines.append(f"| {c} | " + " | ".join(vals) + " |")
    return lines + failures


ROWS_DODGE = 1.15  # the factor between neighbouring arms of one size on the plot's log-scale rows axis


def write_plot(path: Path, summary: dict, title: str) -> Path:
    """plot.png (plot_figure)."""
    import matplotlib.pyplot as plt

    fig = plot_figure(summary, title)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_figure(summary: dict, title: str):
    """Left, the headline metric vs training rows (one point per arm, interval bars); right, each arm's
    paired difference from the baseline — arms' own intervals include the spread between held-out rows, so
    they can overlap while the paired difference excludes zero. The legend sits below both panels, where it
    cannot cover a bar (matplotlib's `loc="best"` put it over one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    metric, baseline = summary["metric"], summary["baseline"]
    lower = summary["lower_is_better"]
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(11, 5), dpi=120, gridspec_kw={"width_ratios": [3, 2]},
                                 layout="constrained")
    shown = [(i, a) for i, a in enumerate(summary["arms"]) if a["metrics"].get(metric)]
    # arms of one size (equal rows, as in the demo) stand side by side: on a rows axis they would share one x
    sizes = [a["profile"]["rows"] for _, a in shown]
    by_rows = len(set(sizes)) > 1
    xs = []
    for k, (i, a) in enumerate(shown):
        m, rows = a["metrics"][metric], a["profile"]["rows"]
        # on the rows axis, arms of one size among others are set apart a little, so no bar hides another
        # (random_n and longest_n take the curated arm's size); the legend names them
        same = [j for j, r in enumerate(sizes) if r == rows]
        x = rows * ROWS_DODGE ** (same.index(k) - (len(same) - 1) / 2) if by_rows else k
        xs.append(x)
        ax.errorbar([x], [m["mean"]], yerr=[[m["mean"] - m["low"]], [m["high"] - m["mean"]]], fmt="o", capsize=5,
                    color=f"C{i}", label=f"{a['name']} ({rows} rows)")
        if by_rows and len(same) == 1:
            ax.annotate(a["name"], (x, m["mean"]), textcoords="offset points", xytext=(7, 5), fontsize=9)
    if metric in summary["base_model"]:
        ax.axhline(summary["base_model"][metric]["mean"], color="grey", linestyle="--", linewidth=1,
                   label="base model (no training)")
    if by_rows:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        # ticks at the arms' own sizes: powers of ten alone left a single label between 47 and 402 rows
        ax.set_xticks(sorted(set(sizes)), [str(r) for r in sorted(set(sizes))])
        ax.xaxis.set_minor_locator(NullLocator())  # labelled minor ticks overlapped the major ones
        ax.set_xlabel("training rows (log scale)")
    else:
        ax.set_xticks(xs, [a["name"] for _, a in shown])
        ax.set_xlim(-0.6, len(xs) - 0.4)
        ax.set_xlabel(f"arm ({shown[0][1]['profile']['rows']} training rows each)" if shown else "arm")
    ax.set_ylabel(METRIC_INFO[metric][2] + (" (lower is better)" if lower else ""), fontsize=9)
    ax.set_title(f"{metric}: mean over seeds, {summary['confidence']:.0%} interval", fontsize=10)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    arms_first = sorted(range(len(labels)), key=lambda j: labels[j].startswith("base model"))
    handles, labels = [handles[j] for j in arms_first], [labels[j] for j in arms_first]
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=min(5, len(handles)), frameon=False)

    diffs = [(i, a) for i, a in enumerate(summary["arms"]) if metric in a.get("vs_" + baseline, {})]
    for y, (i, a) in enumerate(diffs):
        d = a["vs_" + baseline][metric]
        dx.errorbar([d["mean"]], [y], xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o", capsize=5,
                    color=f"C{i}")
    dx.axvline(0.0, color="black", linewidth=1)
    dx.set_yticks(range(len(diffs)), [a["name"] for _, a in diffs])
    dx.set_ylim(-0.7, len(diffs) - 0.3)
    better = "left" if lower else "right"
    dx.set_xlabel(f"{metric}: arm − {baseline} (paired; better to the {better})", fontsize=9)
    dx.set_title(f"difference from `{baseline}`", fontsize=10)
    dx.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig
