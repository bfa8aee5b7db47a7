"""`pond run --estimate`: requests and an upper bound on tokens per teacher step, sending nothing."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def estimate_step(kind: str, df: Any, options: Any, teachers: dict[str, Any] | None = None) -> dict[str, int]:
    """Upper bounds for one recipe step: {"requests": calls, "max_tokens": prompt + completion tokens}.

    `kind` is the step kind; `df` the rows the step would see (or a superset: bounds only grow with
    rows); `options` the step's options model or a dict; `teachers` the recipe's teachers, to name a
    missing one before anything runs. Steps that do not call a teacher cost nothing. A judge also
    splits the bound into prompt and completion tokens (`pond run --estimate` adds its cached calls).
    """
    if kind == "synthesize":
        from synthesis.generators import SynthesizeOptions as Options
        from synthesis.generators import estimate
    elif kind == "judge":
        from synthesis.judge import JudgeOptions as Options
        from synthesis.judge import estimate
    else:
        return {"requests": 0, "max_tokens": 0}
    opts = options if isinstance(options, Options) else Options.model_validate(
        options.model_dump() if isinstance(options, BaseModel) else (options or {}))
    if teachers is not None:
        from synthesis.client import resolve_teacher

        resolve_teacher(teachers, opts.teacher)
    return estimate(df, opts)
