"""No code names a step kind but the step table and the step's own modules (issue #29): the runner,
`pond update`, the pipeline, the recipe checks, the estimate and the reports ask a step's traits
(pond.steps.StepSpec) and its options' methods, so that a new step of any kind is its module plus
one line in pond/steps.py (docs/architecture.md, "Adding a step").

A kind's name may stand as a string literal (an f-string's constant parts included) only in
pond/steps.py, in the kind's module and in the module its `distribute` names. Not scanned: tests/,
and bench/, whose scripts call step functions directly and label their figures with the kind.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from curation.step import StepOptions
from pond.steps import STEPS

ROOT = Path(__file__).resolve().parents[1]
NOT_SCANNED = {"tests", "bench"}

# (file, literal): a literal that equals a step kind but means something else, where renaming it would
# change a recipe key or a file's format. Kept as short as it can be: a pair no longer found fails below.
ALLOWED = {
    ("evaluation/evaluate.py", "judge"): "the recipe's `evaluate.judge`, the evaluation's judging teacher",
    ("evaluation/scoring.py", "judge"): "the evaluation's per-row score column (the judge's verdict, 0/0.5/1)",
    ("evaluation/report.py", "judge"): "that per-row column, read for the judge win rate",
    ("pond/pipeline.py", "judge"): "the judging model's name in a judge step's calibration figures "
                                   "(stats.json, synthesis.calibration)",
    ("pond/inspect_synthetic.py", "judge"): "the same calibration figure",
}


def _source_file(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).relative_to(ROOT).as_posix()


def own_files(kind: str) -> set[str]:
    """Where `kind` may be named: the step table, its module and its distributed form's module."""
    spec = STEPS[kind]
    files = {"pond/steps.py", _source_file(spec.module)}
    module, _, function = spec.distribute.partition(":")
    if function:
        files.add(_source_file(module))
    return files


def scanned_files() -> Iterator[Path]:
    """Every .py file of the checkout but those NOT_SCANNED (hidden folders, the venv among them, left out)."""
    for folder, dirs, files in os.walk(ROOT):
        top = Path(folder) == ROOT
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in NOT_SCANNED))
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def kind_literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, kind) of every string constant equal to a step kind; ast.walk reaches an f-string's
    constant parts too."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STEPS:
            yield node.lineno, node.value


def named_kinds() -> dict[tuple[str, str], list[int]]:
    """(file, kind) -> lines, for every kind named outside its own files."""
    found: dict[tuple[str, str], list[int]] = {}
    own = {kind: own_files(kind) for kind in STEPS}
    for path in scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        for line, kind in kind_literals(path):
            if rel not in own[kind]:
                found.setdefault((rel, kind), []).append(line)
    return found


def test_no_step_kind_is_named_outside_its_own_files():
    named = {pair: lines for pair, lines in named_kinds().items() if pair not in ALLOWED}
    assert not named, ("step kinds named outside pond/steps.py and the step's own modules: ask a trait of "
                       "pond.steps.StepSpec or a method of the step's options instead: " +
                       "; ".join(f"{f}:{','.join(map(str, lines))}: {k!r}" for (f, k), lines in sorted(named.items())))


def test_every_allowed_literal_is_still_there():
    """An allowance whose literal is gone is dropped from ALLOWED, so the list stays as short as it can."""
    stale = sorted(set(ALLOWED) - set(named_kinds()))
    assert not stale, f"no longer named, drop from ALLOWED: {stale}"


def test_the_scan_reads_plain_and_f_string_literals(tmp_path):
    kind = next(iter(STEPS))
    path = tmp_path / "x.py"
    path.write_text(f"a = '{kind}'\nb = f'{{a}}{kind}'\nc = '{kind}-not'\n")
    assert sorted(kind_literals(path)) == [(1, kind), (2, kind)]


def test_a_judging_step_has_the_options_the_recipe_checks_read():
    """`teacher_judges_rows` promises the options pond.recipe reads (which rows, self-judging, calibration,
    the score columns); a step given the trait without them would fail only when a recipe used it."""
    for kind, spec in STEPS.items():
        model = spec.options_model()
        if spec.teacher_judges_rows:
            assert {"rows", "self_judge", "calibrate"} <= set(model.model_fields), kind
            assert callable(getattr(model, "score_columns", None)), kind
        if spec.teacher_writes_rows or spec.teacher_judges_rows:
            assert model.teacher_needed is not StepOptions.teacher_needed or "teacher" in model.model_fields, kind
