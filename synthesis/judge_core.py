"""The judge core both LLM judges share: the reply schemas, reading a verdict, combining both orders.

`synthesis.judge` (the `judge` step) and `evaluation.judge` (win rates and grades of adapters)
build their requests on these. Every pairwise question is asked in both orders (MT-Bench style):
only a verdict that survives the swap counts, anything else is a tie. The prompts of both live in
synthesis/prompts/: the step's `judge_*.txt` and rubrics, the evaluation's `evaluation/`.
"""
from __future__ import annotations

from typing import Any, Literal

from synthesis.prompts import PROMPT_DIR

EVALUATION_PROMPT_DIR = PROMPT_DIR / "evaluation"
VERDICTS = ("A", "B", "tie")
Verdict = Literal["A", "B", "tie"]  # what the judge says about (answer shown as A, answer shown as B)
Winner = Literal["a", "b", "tie"]  # the outcome for answers a, b after both orders


def _schema(field: str, spec: dict, max_reason_chars: int) -> dict:
    # max_reason_chars 0: the verdict alone. On a CPU every reply token is a full pass over the judge's
    # weights (decoding is bound by memory bandwidth), so a reason costs more than the prompt does.
    if max_reason_chars == 0:
        return {"type": "object", "additionalProperties": False, "required": [field], "properties": {field: spec}}
    return {"type": "object", "additionalProperties": False, "required": ["reason", field],
            "properties": {"reason": {"type": "string", "maxLength": max_reason_chars}, field: spec}}


def score_schema(max_reason_chars: int = 160) -> dict:
    return _schema("score", {"type": "integer", "minimum": 1, "maximum": 10}, max_reason_chars)


def pairwise_schema(max_reason_chars: int = 160) -> dict:
    return _schema("winner", {"type": "string", "enum": list(VERDICTS)}, max_reason_chars)


def parse_verdict(result: Any) -> tuple[Verdict, str]:
    """(winner A/B/tie, reason) from a pairwise reply (a synthesis.client.Completion); ValueError if none."""
    data = result.json()
    winner = data.get("winner") if isinstance(data, dict) else None
    if winner not in VERDICTS:
        raise ValueError(f"judge reply has no winner A/B/tie: {result.text[:120]!r}")
    return winner, str(data.get("reason", "")).strip()


def combine_orders(first: str, second: str) -> Winner:
    """Winner from both orders: `first` saw (a, b) as (A, B), `second` saw (b, a); disagreement is a tie."""
    one = {"A": "a", "B": "b"}.get(first, "tie")
    two = {"A": "b", "B": "a"}.get(second, "tie")
    return one if one == two else "tie"  # type: ignore[return-value]
