"""Judge calibration: before a judge filters or scores anything, measure whether it can tell a good
answer from a broken one, on a set made from the run's own rows.

- Positives: real rows of the step's input (they passed every rule before the judge), or a gold file.
- Negatives: each positive broken in ways any judge worth using must catch (`CORRUPTIONS`):
  an answer taken from another row; the answer cut mid-sentence; the prompt's words shuffled; an
  answer that repeats the prompt; an answer in another language (another row's answer whose
  language differs from the prompt's, so it is off topic too: there is no translator on a CPU);
  fluent nonsense (the answer's first sentence, then sentences of unrelated answers).
- The judge scores every item with the step's own rubric and template; per corruption type, the AUC
  of positives against that type's negatives (1.0: every positive above every negative; 0.5:
  chance), and with a `min_score`, the share of that type the threshold rejects.
- A judge whose worst AUC is below `min_calibration` is refused (`CalibrationFailed`, one line
  saying what to do). Every call goes through the shared response cache, so a rerun costs nothing.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from curation.answer_faults import language
from curation.errors import PondError
from curation.records import synthetic_source
from synthesis.rows import row_answer, row_prompt

CORRUPTIONS = ("answer_from_another_row", "cut_mid_sentence", "shuffled_prompt", "repeats_prompt",
               "other_language", "fluent_nonsense")
POSITIVE = "positive"
MIN_WORDS = 12  # an answer shorter than this cannot be cut mid-sentence, nor stitched into nonsense
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class CalibrationFailed(PondError, ValueError):
    """The judge cannot tell good answers from broken ones well enough (one line: what to do)."""


class CalibrationImpossible(CalibrationFailed):
    """Too few rows to build the calibration set (one line: the count needed)."""


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str
    kind: str  # POSITIVE or a corruption

    @property
    def label(self) -> int:
        return int(self.kind == POSITIVE)


def _usable(df: pl.DataFrame) -> list[tuple[str, str]]:
    """(prompt, answer) of real rows with a prompt and an answer long enough to corrupt every way."""
    real = df.filter(~synthetic_source(pl.col("source")))
    pairs = [(row_prompt(r), row_answer(r)) for r in real.select("messages", "text").to_dicts() if r["messages"]]
    return [(p, a) for p, a in pairs if p.strip() and len(a.split()) >= MIN_WORDS and len(p.split()) >= 3]


def needed(rows: int) -> int:
    """Real rows the set needs: the positives and as many donors of other rows' answers."""
    return 2 * rows


def _cut(answer: str, rng: random.Random) -> str:
    words = answer.split(" ")
    at = rng.randint(len(words) * 2 // 5, len(words) * 3 // 5)
    while at > 1 and re.search(r"[.!?:]$", words[at - 1]):  # end inside a sentence, never at its end
        at -= 1
    return " ".join(words[:at])


def _shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(5):  # a prompt of repeated words can shuffle into itself; try a few times
        rng.shuffle(words)
        if " ".join(words) != " ".join(text.split()):
            break
    return " ".join(words)


def _nonsense(answer: str, donors: list[str], rng: random.Random) -> str:
    first = _SENTENCE.split(answer.strip())[0]
    others = [s for d in donors for s in _SENTENCE.split(d.strip()) if len(s.split()) >= 4]
    rng.shuffle(others)
    return " ".join([first, *others[:4]])


def build(df: pl.DataFrame, rows: int, seed: int = 0, gold: pl.DataFrame | None = None) -> list[Item]:
    """The calibration set: `rows` positives and one negative of each corruption per positive (an
    `other_language` negative only where the pool has an answer in another language)."""
    pool = _usable(df)
    positives = _usable(gold) if gold is not None else None
    rng = random.Random(seed)
    if positives is None:
        if len(pool) < needed(rows):
            raise CalibrationImpossible(f"judge calibration needs {needed(rows)} real rows with a prompt and an answer of "
                                    f"{MIN_WORDS}+ words ({rows} positives and as many donors); the step has "
                                    f"{len(pool)}: lower calibration_rows or give a `calibration:` gold file")
        picked = rng.sample(range(len(pool)), needed(rows))
        positives, donors = [pool[i] for i in picked[:rows]], [pool[i][1] for i in picked[rows:]]
    else:
        if len(positives) < rows or len(pool) < rows:
            raise CalibrationImpossible(f"judge calibration needs {rows} usable rows in the gold file and {rows} in the "
                                    f"step's input; found {len(positives)} and {len(pool)}")
        positives = rng.sample(positives, rows)
        donors = [a for _, a in rng.sample(pool, rows)]
    said = [(a, language(a)) for _, a in pool]
    items = []
    for i, (prompt, answer) in enumerate(positives):
        other = donors[i]
        items += [Item(prompt, answer, POSITIVE),
                  Item(prompt, other, "answer_from_another_row"),
                  Item(prompt, _cut(answer, rng), "cut_mid_sentence"),
                  Item(_shuffled(prompt, rng), answer, "shuffled_prompt"),
                  Item(prompt, prompt, "repeats_prompt"),
                  Item(prompt, _nonsense(answer, donors[:i] + donors[i + 1:], rng), "fluent_nonsense")]
        lang = language(prompt)
        elsewhere = [a for a, other in said if other is not None and lang is not None and other != lang]
        if elsewhere:
            items.append(Item(prompt, rng.choice(elsewhere), "other_language"))
    return items


def _not_graded(summary: dict) -> str:
    skipped = summary.get("not_graded") or []
    return f"; not graded after the first failure: {', '.join(skipped)}" if skipped else ""


def summarise(items: list[Item], scores: list[int | None], min_score: int | None) -> dict:
    """Per corruption type: AUC against the positives, and the share the threshold rejects. `scores` may be
    shorter than `items` where grading stopped early (`rounds`): the types without a score are `not_graded`."""
    graded = {it.kind for it, _ in zip(items, scores)}
    pos = np.array([s for it, s in zip(items, scores) if it.kind == POSITIVE and s is not None], dtype=float)
    out: dict = {"positives": int(len(pos)), "unreadable": sum(s is None for s in scores),
                 "positive_mean": round(float(pos.mean()), 3) if len(pos) else None, "by_corruption": {}}
    if min_score is not None and len(pos):
        out["positives_kept"] = round(float((pos >= min_score).mean()), 3)
    for kind in CORRUPTIONS:
        neg = np.array([s for it, s in zip(items, scores) if it.kind == kind and s is not None], dtype=float)
        if not len(neg) or not len(pos):
            out["by_corruption"][kind] = {"negatives": int(len(neg)), "auc": None}
            continue
        auc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        figures = {"negatives": int(len(neg)), "auc": round(float(auc), 3), "mean": round(float(neg.mean()), 3)}
        if min_score is not None:
            figures["rejected"] = round(float((neg < min_score).mean()), 3)
        out["by_corruption"][kind] = figures
    aucs = {k: v["auc"] for k, v in out["by_corruption"].items() if v["auc"] is not None}
    out["worst"] = min(aucs, key=aucs.get) if aucs else None
    out["worst_auc"] = aucs[out["worst"]] if aucs else None
    not_graded = [k for k in CORRUPTIONS if k not in graded and any(it.kind == k for it in items)]
    if not_graded:
        out["not_graded"] = not_graded
    return out


def rounds(items: list[Item], fail_fast: bool) -> list[list[int]]:
    """The order the set is graded in, as lists of item indices: all at once, or (`fail_fast`) the positives
    with the first corruption type, then one type a round, so that grading can stop at the first type the
    judge fails. The verdict is the same either way; a judge that passes grades every round."""
    if not fail_fast:
        return [list(range(len(items)))]
    order = [POSITIVE, *CORRUPTIONS]
    by_kind = [[i for i, it in enumerate(items) if it.kind == kind] for kind in order]
    graded = [by_kind[0] + by_kind[1], *by_kind[2:]]
    return [r for r in graded if r] or [[]]


def failing(summary: dict, min_calibration: float) -> bool:
    """Whether the types graded so far already refuse the judge."""
    return summary["worst_auc"] is not None and summary["worst_auc"] < min_calibration


def check(summary: dict, min_calibration: float, model: str, rubric: str) -> None:
    """Refuse a judge whose worst corruption type is below `min_calibration` (or that read nothing)."""
    if summary["worst_auc"] is None:
        raise CalibrationFailed(f"judge {model} could not be calibrated: no readable scores "
                                f"({summary['unreadable']} unreadable replies)")
    if failing(summary, min_calibration):
        per = ", ".join(f"{k} {v['auc']}" for k, v in summary["by_corruption"].items() if v["auc"] is not None)
        raise CalibrationFailed(
            f"judge {model} failed calibration with rubric {rubric!r}: AUC {summary['worst_auc']} on "
            f"{summary['worst']} < min_calibration {min_calibration} (per corruption: {per}{_not_graded(summary)}); "
            f"use a bigger judge, "
            f"another rubric or prompt, or lower min_calibration knowingly")
