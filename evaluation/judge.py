"""LLM-as-judge: pairwise win rates with both orders asked (MT-Bench style), or 1-10 grades.

Position bias is the best-known judge failure: many judges prefer whichever answer comes first.
So every pair is asked twice, once in each order, and only a verdict that survives the swap
counts; an inconsistent pair (or a tie in either order) is a tie. Win rate counts ties as half.

The verdict logic (`pairwise_outcomes`) takes any `ask` function, so it is tested without a
server; `teacher_ask` / `teacher_grade` send the questions to a teacher through the synthesis
client, whose SQLite cache means a rerun asks nothing twice. The schemas, verdict parsing and the
both-orders rule are the judge core's (synthesis.judge_core), shared with the `judge` step. The
prompts are plain text files in synthesis/prompts/evaluation/ that users can read and replace
(`evaluate.judge_prompt`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from synthesis.judge_core import EVALUATION_PROMPT_DIR, Verdict, combine_orders, pairwise_schema, parse_verdict, score_schema

PROMPTS_DIR = EVALUATION_PROMPT_DIR
QUESTION_CHARS = 4000  # keep judge prompts inside small judges' context windows
ANSWER_CHARS = 3000

Outcome = Literal["a", "b", "tie"]
# ask(items) -> one verdict per (question, answer in position A, answer in position B); None = failed call
Ask = Callable[[Sequence[tuple[str, str, str]]], list[Verdict | None]]
Grade = Callable[[Sequence[tuple[str, str]]], list[int | None]]



def load_prompt(kind: Literal["pairwise", "single"], path: str | Path | None = None, *, benchmark: bool = False) -> str:
    """The judge prompt template: a user's replacement file, or the packaged default (`mt_<kind>.txt`
    for benchmark questions, whose question text carries earlier turns and the reference)."""
    p = Path(path).expanduser() if path else PROMPTS_DIR / f"{'mt_' if benchmark else ''}{kind}.txt"
    text = p.read_text(encoding="utf-8")
    needed = ("{question}", "{answer_a}", "{answer_b}") if kind == "pairwise" else ("{question}", "{answer}")
    missing = [n for n in needed if n not in text]
    if missing:
        raise ValueError(f"{p}: a {kind} judge prompt needs the placeholders {', '.join(missing)}")
    return text


_PLACEHOLDER = re.compile(r"\{(question|answer_a|answer_b|answer)\}")


def fill(template: str, **values: str) -> str:
    """Substitute the placeholders in one pass (answers may contain braces or placeholder text)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def render_question(prompt_messages: list[dict]) -> str:
    """What the judge sees as the question: the last user turn, with earlier turns as context."""
    if not prompt_messages:
        return ""
    *history, last = prompt_messages
    if not history:
        return last["content"][-QUESTION_CHARS:]
    context = "\n".join(f"{m['role']}: {m['content']}" for m in history)
    text = f"(Conversation so far)\n{context}\n\n(Latest message)\n{last['content']}"
    return text[-QUESTION_CHARS:]


def combine(first: Verdict | None, second: Verdict | None) -> Outcome | None:
    """Outcome for answers a, b from the verdict with a first and the verdict with b first."""
    if first is None or second is None:
        return None
    return combine_orders(first, second)  # a tie in either order, or a flipped verdict: a tie


def pairwise_outcomes(questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
                      ask: Ask) -> list[Outcome | None]:
    """Ask every pair in both orders (one batch, so a server can run them concurrently)."""
    if not (len(questions) == len(answers_a) == len(answers_b)):
        raise ValueError("questions and answers must align")
    n = len(questions)
    items = [(q, a, b) for q, a, b in zip(questions, answers_a, answers_b, strict=True)]
    items += [(q, b, a) for q, a, b in zip(questions, answers_a, answers_b, strict=True)]
    verdicts = ask(items)
    return [combine(verdicts[i], verdicts[n + i]) for i in range(n)]


def win_scores(outcomes: Sequence[Outcome | None]) -> np.ndarray:
    """Per pair, from a's side: 1 win, 0.5 tie, 0 loss, NaN when the judge failed."""
    table = {"a": 1.0, "tie": 0.5, "b": 0.0, None: float("nan")}
    return np.array([table[o] for o in outcomes], dtype=np.float64)


def win_rate(outcomes: Sequence[Outcome | None]) -> dict:
    s = win_scores(outcomes)
    ok = s[~np.isnan(s)]
    return {"win_rate": float(ok.mean()) if ok.size else float("nan"),
            "wins": int((ok == 1).sum()), "ties": int((ok == 0.5).sum()), "losses": int((ok == 0).sum()),
            "failed": int(np.isnan(s).sum())}


# --- the teacher behind ask/grade ----------------------------------------------------------


def _session(teacher, cache_path: Path | None):
    from synthesis.cache import ResponseCache
    from synthesis.client import TeacherSession

    return TeacherSession(teacher, ResponseCache(cache_path) if cache_path is not None else None)


def teacher_ask(teacher, *, cache_path: Path | None = None, prompt: str | None = None, max_tokens: int = 384,
                track: Callable | None = None, reason_chars: int = 400) -> Ask:
    """An `ask` that sends each item to the teacher (greedy, structured output, cached)."""
    from synthesis.client import ChatRequest

    template = prompt or load_prompt("pairwise")

    def ask(items: Sequence[tuple[str, str, str]]) -> list[Verdict | None]:
        reqs = [ChatRequest(messages=[{"role": "user", "content": fill(
                    template, question=q, answer_a=a[:ANSWER_CHARS], answer_b=b[:ANSWER_CHARS])}],
                            max_tokens=max_tokens, temperature=0.0, schema=pairwise_schema(reason_chars),
                            schema_name="verdict")
                for q, a, b in items]
        out: list[Verdict | None] = []
        for r in _session(teacher, cache_path).run(reqs, track, "judge (pairwise)"):
            try:
                out.append(None if isinstance(r, BaseException) else parse_verdict(r)[0])
            except ValueError:  # not JSON, or no winner A/B/tie
                out.append(None)
        return out

    return ask


def teacher_grade(teacher, *, cache_path: Path | None = None, prompt: str | None = None, max_tokens: int = 384,
                  track: Callable | None = None, reason_chars: int = 400) -> Grade:
    """A `grade` that asks the teacher for a 1-10 score per (question, answer)."""
    from synthesis.client import ChatRequest

    template = prompt or load_prompt("single")

    def grade(items: Sequence[tuple[str, str]]) -> list[int | None]:
        reqs = [ChatRequest(messages=[{"role": "user", "content": fill(template, question=q, answer=a[:ANSWER_CHARS])}],
                            max_tokens=max_tokens, temperature=0.0, schema=score_schema(reason_chars), schema_name="grade")
                for q, a in items]
        out: list[int | None] = []
        for r in _session(teacher, cache_path).run(reqs, track, "judge (grades)"):
            try:
                score = int(r.json()["score"]) if not isinstance(r, BaseException) else None
            except (ValueError, KeyError, TypeError):
                score = None
            out.append(score if score is not None and 1 <= score <= 10 else None)
        return out

    return grade
