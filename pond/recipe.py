"""Recipes: YAML -> validated pydantic models, with errors that name the file, line and key.

A recipe is data, not code. Unknown keys and bad values are errors of the form

    recipes/x.yaml:12: steps[3].minhash_dedup.threshold: Input should be less than or equal to 1

Defaults are resolved by the models and written back into the run directory (`recipe.yaml`).
`${VAR}` and `~` in string values are expanded when loading.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curation.errors import PondError
from curation.ingest import InputOptions
from curation.settings import default_cache_dir
from curation.step import StepOptions
from evaluation.config import EvaluateConfig, ExperimentConfig
from pond.executors.config import RayConfig
from pond.retrain_config import RetrainConfig
from pond.steps import STEPS
from synthesis.client import TeacherConfig
from training.config import TrainConfig


class RecipeError(PondError, ValueError):
    """One or more problems in a recipe; str() is one line per problem."""


class Step(BaseModel):
    """One entry of `steps:` after validation: its kind and typed options."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    kind: str
    options: StepOptions

    def dump(self) -> dict[str, Any]:
        return {self.kind: self.options.model_dump(mode="json")}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="name of the recipe (used for run folders and reports)")
    input: InputOptions = Field(description="where the raw corpus is and how to read it")
    seed: int = Field(0, description="seed for every random choice (sampling, training, selection)")
    executor: Literal["local", "ray"] = Field(
        "local", description="where curation steps run: `local` (polars in this process) or `ray` (the same "
                             "step functions on a Ray cluster; same results); `pond run --executor` overrides it")
    ray: RayConfig = Field(default_factory=RayConfig, description="the Ray cluster and its settings (executor: ray)")
    # parsed by parse_steps (it needs the YAML node tree for line numbers), never from a dict
    steps: list[Step] = Field(default_factory=list, description="curation and synthesis steps, run in order")
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict, description="teacher LLM endpoints by name")
    train: TrainConfig | None = Field(None, description="QLoRA/LoRA training of the student on the curated set")
    evaluate: EvaluateConfig | None = Field(None, description="held-out evaluation of the trained adapter")
    experiment: ExperimentConfig | None = Field(None, description="quality-vs-quantity experiment (pond experiment)")
    retrain: RetrainConfig | None = Field(
        None, description="continuous curation (`pond update`): drift report settings and the rule that trains a new "
                          "adapter version after a data drop")

    def warnings(self) -> list[str]:
        """Legal but doubtful choices, printed by `pond validate` and `pond run`."""
        judges = [s.options for s in self.steps if STEPS[s.kind].teacher_judges_rows]
        out = [f"judge teacher {j.teacher_needed()!r} judges rows its own model wrote (self_judge: true): a "
               f"calibrated filter only; the report states it" for j in judges if j.self_judge]
        for i, a in enumerate(judges):
            for b in judges[i + 1:]:
                # rows: synthetic then rows: real into one column is legal: each keeps the other's scores
                shared = set(a.score_columns()) & set(b.score_columns())
                if shared and (a.rows == b.rows or "all" in (a.rows, b.rows)):
                    out += [f"two judge steps write the column {column!r} for the same rows: the second "
                            f"overwrites the first's scores — give one `column:` another name"
                            for column in sorted(shared)]
        return out

    def dump(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"steps"})
        data["steps"] = [s.dump() for s in self.steps]
        # keep key order readable: name, input, seed, steps, ...
        order = ["name", "input", "seed", "executor", "ray", "steps", "teachers", "train", "evaluate", "experiment", "retrain"]
        return {k: data[k] for k in order if k in data}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False, allow_unicode=True)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.dump(), sort_keys=True).encode()).hexdigest()


# --- line numbers -------------------------------------------------------------------------------

def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (a pydantic error location), or its nearest parent."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    # an unknown key is best reported where the key itself stands
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(recipe)"


def _errors(source: str, root: yaml.Node | None, exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}:{_line_of(root, loc) or 1}: {_format_loc(loc)}: {msg}")
    return lines


# --- loading ------------------------------------------------------------------------------------

def _expand(value: Any) -> Any:
    # ${POND_CACHE_DIR} works in recipes even when the variable is unset (its default applies)
    os.environ.setdefault("POND_CACHE_DIR", str(default_cache_dir()))
    if isinstance(value, str):
        return os.path.expanduser(os.path.expandvars(value)) if ("$" in value or value.startswith("~")) else value
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def parse_steps(raw: Any, source: str, root: yaml.Node | None) -> tuple[list[Step], list[str]]:
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [f"{source}:{_line_of(root, ('steps',))}: steps: must be a list of `kind: {{options}}` entries"]
    steps, problems = [], []
    for i, entry in enumerate(raw):
        where = ("steps", i)
        if not isinstance(entry, dict) or len(entry) != 1:
            problems.append(f"{source}:{_line_of(root, where)}: steps[{i}]: each step is one `kind: {{options}}` entry")
            continue
        kind, options = next(iter(entry.items()))
        if kind not in STEPS:
            problems.append(f"{source}:{_line_of(root, where)}: steps[{i}]: unknown step kind {kind!r} "
                            f"(known: {', '.join(STEPS)})")
            continue
        try:
            model = STEPS[kind].options_model().model_validate(options or {})
        except ValidationError as exc:
            problems.extend(_errors(source, root, exc, where + (kind,)))
            continue
        steps.append(Step(kind=kind, options=model))
    return steps, problems


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise RecipeError(f"{source}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}:1: a recipe is a YAML mapping (name:, input:, steps:, ...)")
    data = _expand(data)
    steps, problems = parse_steps(data.pop("steps", None), source, root)
    try:
        recipe = Recipe.model_validate({**data, "steps": []})
    except ValidationError as exc:
        problems = _errors(source, root, exc) + problems
        recipe = None
    for i, step in enumerate(steps):
        teacher = step.options.teacher_needed()
        if recipe is not None and teacher is not None and teacher not in recipe.teachers:
            problems.append(f"{source}:{_line_of(root, ('steps', i))}: steps[{i}].{step.kind}.teacher: "
                            f"unknown teacher {teacher!r} (define it under `teachers:`)")
    if recipe is not None:
        problems += _self_judging(steps, recipe.teachers, source, root)
        problems += _pairs_for_dpo(steps, recipe, source, root)
    if problems:
        raise RecipeError("\n".join(problems))
    assert recipe is not None
    recipe.steps = steps
    return recipe


def _self_judging(steps: list[Step], teachers: dict[str, TeacherConfig], source: str, root) -> list[str]:
    """A judge whose model writes the rows it judges must say `self_judge: true`, and be calibrated."""
    model = {name: t.model for name, t in teachers.items()}
    writers = {model[s.options.teacher_needed()]: s.options.teacher_needed() for s in steps
               if STEPS[s.kind].teacher_writes_rows and s.options.teacher_needed() in model}
    problems = []
    for i, s in enumerate(steps):
        judge = s.options.teacher_needed()
        if not STEPS[s.kind].teacher_judges_rows or model.get(judge) not in writers or s.options.rows == "real":
            continue  # judging only real rows is not judging one's own
        where = f"{source}:{_line_of(root, ('steps', i))}: steps[{i}].{s.kind}"
        writer = writers[model[judge]]
        if not s.options.self_judge:
            problems.append(f"{where}: teacher {judge!r} is the model ({model[writer]}) that teacher "
                            f"{writer!r} writes the synthetic rows with; a model judging its own rows needs "
                            f"`self_judge: true` (a calibrated filter), or use another judge")
        elif not s.options.calibrate:
            problems.append(f"{where}: self_judge needs `calibrate: true`: a model judging its own rows must "
                            f"pass calibration first")
    return problems


def _pairs_for_dpo(steps: list[Step], recipe: Recipe, source: str, root) -> list[str]:
    """`train: {method: dpo}` and an experiment arm `curated+dpo` train on the pairs the `preference_pairs` step
    makes: without that step they would fail after curation, so the recipe fails to load."""
    if any(STEPS[s.kind].makes_preference_pairs for s in steps):
        return []
    fix = "add a `preference_pairs` step to `steps:` (docs/preference-pairs.md)"
    problems = []
    if recipe.train is not None and recipe.train.method == "dpo":
        problems.append(f"{source}:{_line_of(root, ('train', 'method'))}: train.method: dpo trains on preference "
                        f"pairs, and no step makes them: {fix}, or train with method qlora or lora")
    for i, arm in enumerate(recipe.experiment.arms if recipe.experiment else []):
        if arm.data == "curated+dpo":
            problems.append(f"{source}:{_line_of(root, ('experiment', 'arms', i, 'data'))}: experiment.arms[{i}].data: "
                            f"curated+dpo trains on preference pairs, and no step makes them: {fix}")
    return problems


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot be read ({exc})") from None
    return parse_recipe(text, str(path))
