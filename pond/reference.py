"""The recipe reference (docs/recipe-reference.md), generated from the option models themselves.

A test regenerates it and compares with the committed file, so the docs cannot drift from the code:
`python -m pond.reference > docs/recipe-reference.md` after changing an option.
"""
from __future__ import annotations

import json
import sys

from pydantic import BaseModel

from pond.steps import STEPS


def _type_name(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    for prefix in ("<class '", "'>"):
        text = text.replace(prefix, "")
    return text.replace("NoneType", "None")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return "`" + json.dumps(value, default=str) + "`"
    except TypeError:
        return f"`{value}`"


def options_table(model: type[BaseModel]) -> list[str]:
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        kind = _type_name(field.annotation).replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {desc} |")
    return lines


def render() -> str:
    from curation.embed import EmbeddingOptions
    from curation.ingest import InputOptions
    from evaluation.config import ArmConfig, EvaluateConfig, ExperimentConfig
    from pond.recipe import Recipe
    from pond.retrain_config import DriftOptions, RetrainConfig, RetrainWhen
    from synthesis.client import TeacherConfig
    from training.config import DPOOptions, TrainConfig

    out = ["# Recipe reference", "",
           "Generated from pond's option models (`python -m pond.reference`); a test keeps it in sync.", "",
           "## Top level", ""]
    out += options_table(Recipe)
    out += ["", "## `input`", ""] + options_table(InputOptions)
    out += ["", "## Steps", "", "Each entry of `steps:` is `kind: {options}`; they run in order.", ""]
    for kind, spec in STEPS.items():
        out += [f"### `{kind}`", "", spec.summary + ".", ""] + options_table(spec.options_model()) + [""]
    out += ["### `embedding` (of every step that embeds rows)", ""] + options_table(EmbeddingOptions) + [""]
    out += ["## `teachers.<name>`", ""] + options_table(TeacherConfig)
    out += ["", "## `train`", ""] + options_table(TrainConfig)
    out += ["", "## `evaluate`", ""] + options_table(EvaluateConfig)
    out += ["", "## `experiment`", ""] + options_table(ExperimentConfig)
    out += ["", "### `experiment.arms[]`", ""] + options_table(ArmConfig)
    out += ["", "### `train.dpo` (and an arm's `dpo`)", ""] + options_table(DPOOptions)
    out += ["", "## `retrain`", ""] + options_table(RetrainConfig)
    out += ["", "### `retrain.when`", ""] + options_table(RetrainWhen)
    out += ["", "### `retrain.drift`", ""] + options_table(DriftOptions)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
