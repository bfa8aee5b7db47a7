"""Requests and an upper bound on tokens of one teacher step, sending nothing, for callers that hold
a step kind and its options outside a recipe (tests, a notebook). `pond run --estimate` reads each
step's `estimate` through the step table instead (pond.estimate), which synthesis cannot import.
"""
from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

# the synthesis steps that call a teacher: (module, its options class); a module's STAGE is its step kind
TEACHER_STEPS = (("synthesis.generators", "SynthesizeOptions"), ("synthesis.judge", "JudgeOptions"))


def estimate_step(kind: str, df: Any, options: Any, teachers: dict[str, Any] | None = None) -> dict[str, int]:
    """Upper bounds for one recipe step: {"requests": calls, "max_tokens": prompt + completion tokens}.

    `kind` is the step kind; `df` the rows the step would see (or a superset: bounds only grow with
    rows); `options` the step's options model or a dict; `teachers` the recipe's teachers, to name a
    missing one before anything runs. Steps that do not call a teacher cost nothing. A judge also
    splits the bound into prompt and completion tokens (`pond run --estimate` adds its cached calls).
    """
    found = _teacher_step(kind)
    if found is None:
        return {"requests": 0, "max_tokens": 0}
    module, options_class = found
    opts = options if isinstance(options, options_class) else options_class.model_validate(
        options.model_dump() if isinstance(options, BaseModel) else (options or {}))
    if teachers is not None:
        from synthesis.teachers import Teachers

        Teachers(teachers).config(opts.teacher)
    return module.estimate(df, opts)


def _teacher_step(kind: str) -> tuple[Any, type[BaseModel]] | None:
    """The module of the teacher step `kind` and its options class, None when no teacher step is `kind`."""
    for module_name, options_name in TEACHER_STEPS:
        module = importlib.import_module(module_name)
        if module.STAGE == kind:
            return module, getattr(module, options_name)
    return None
