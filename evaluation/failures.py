"""Failure rates of generated answers: the faults noisy data teaches and curation removes.

Every detector is curation's own (`curation.answer_faults`, the rules the `answer_faults` and
`heuristics` steps apply to training rows), run here on the benchmark answers of each model:

    refusal          opens with a refusal, or holds boilerplate ("As an AI language model")
    wrong_language   answered in another language than the prompt's (langid confident on both)
    hit_cap          ran into max_new_tokens without stopping (the answer's own tokens, counted)
    cut_off          reads as stopped partway (curation's `truncated`: open fence, dangling fragment, ...)
    repetition       degenerate repetition (a phrase looping, Gopher's n-gram limits)
    empty            nothing but whitespace
    repeats_prompt   most of the answer is the prompt again

Rates are per answer (first turn of every prompt), with intervals over prompts and seeds; the
differences between arms are paired on prompts.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from curation import answer_faults as faults
from evaluation.bootstrap import bootstrap_ci, paired_difference_ci

FAULTS = ("refusal", "wrong_language", "hit_cap", "cut_off", "repetition", "empty", "repeats_prompt")
# Re-tokenizing a decoded answer can give a token or two fewer than were generated (merges across the
# stripped whitespace); an answer this close to the cap did not stop on its own.
CAP_SLACK = 2


def detect(prompt: str, answer: str, tokens: int | None, max_new_tokens: int) -> dict[str, bool | None]:
    """Every fault of one answer; `hit_cap` is None where the answer's tokens were not counted."""
    return {"refusal": faults.refusal(answer), "wrong_language": faults.language_mismatch(prompt, answer) is not None,
            "hit_cap": None if tokens is None else tokens >= max_new_tokens - CAP_SLACK,
            "cut_off": faults.truncated(answer) is not None, "repetition": faults.degenerate_repetition(answer),
            "empty": faults.empty(answer), "repeats_prompt": faults.repeats_prompt(prompt, answer)}


def fault_table(questions: pl.DataFrame, answers: pl.DataFrame, max_new_tokens: int,
                count_tokens: Callable[[str], int] | None = None) -> pl.DataFrame:
    """model, question_id and one boolean column per fault, for the first-turn answer to every prompt."""
    prompt = dict(zip(questions["question_id"], questions["turns"].list.first(), strict=True))
    rows = []
    for r in answers.filter(pl.col("turn") == 0).iter_rows(named=True):
        a = r["answer"] or ""
        rows.append({"model": r["model"], "question_id": r["question_id"],
                     **detect(prompt[r["question_id"]], a, count_tokens(a) if count_tokens else None, max_new_tokens)})
    schema = {"model": pl.Utf8, "question_id": pl.Utf8, **{f: pl.Boolean for f in FAULTS}}
    return pl.DataFrame(rows, schema=schema)


def _matrix(table: pl.DataFrame, models: list[str], prompts: list[str], fault: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pl.DataFrame({"question_id": prompts})
    vals, wts = [], []
    for m in models:
        j = frame.join(table.filter(pl.col("model") == m).select("question_id", fault), on="question_id",
                       how="left", maintain_order="left")[fault]
        vals.append(j.cast(pl.Float64).fill_null(0.0).to_numpy())
        wts.append(j.is_not_null().cast(pl.Float64).to_numpy())
    return np.vstack(vals), np.vstack(wts)


def summarise_failures(table: pl.DataFrame, groups: dict[str, list[str]], baseline: str, *, resamples: int = 2000,
                       confidence: float = 0.95) -> dict:
    """Per group (an arm: its seeds' model names) and fault: the rate [CI], counts, and the rate minus the
    baseline group's (paired on prompts)."""
    kw = {"resamples": resamples, "confidence": confidence}
    prompts = sorted(table["question_id"].unique().to_list())
    out: dict = {"prompts": len(prompts), "faults": [], "groups": {}}
    for f in FAULTS:
        if table[f].is_not_null().any():
            out["faults"].append(f)
    for g, ms in groups.items():
        entry: dict = {"models": ms}
        for f in out["faults"]:
            x, w = _matrix(table, ms, prompts, f)
            cell = {"rate": bootstrap_ci(x, w, **kw).to_dict(), "count": int((x * w).sum()), "answers": int(w.sum())}
            if g != baseline and baseline in groups:
                xb, wb = _matrix(table, groups[baseline], prompts, f)
                cell["minus_baseline"] = paired_difference_ci(x, xb, w, wb, **kw).to_dict()
            entry[f] = cell
        out["groups"][g] = entry
    return out


def failure_lines(summary: dict, baseline: str, pct: str) -> list[str]:
    """Markdown: each group's rate of every fault, in percent, with the difference from the baseline."""
    fs = summary["faults"]
    lines = ["", "## Failure rates of generated answers", "",
             f"First-turn benchmark answers ({summary['prompts']} prompts per model), checked with curation's own "
             f"detectors (`curation.answer_faults`). Rate in % [{pct} CI over prompts and seeds]; in parentheses "
             f"the difference from `{baseline}` in points, paired on prompts, with its {pct} CI.", "",
             "| model | " + " | ".join(fs) + " |", "|" + "---|" * (1 + len(fs))]
    for g, e in summary["groups"].items():
        cells = []
        for f in fs:
            c = e[f]
            r = c["rate"]
            s = f"{100 * r['mean']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
            if "minus_baseline" in c:
                d = c["minus_baseline"]
                s += f" ({100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}])"
            cells.append(s)
        lines.append(f"| `{g}` | " + " | ".join(cells) + " |")
    return lines
