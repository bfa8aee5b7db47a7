"""Recipes: validation errors name the file, line and key; defaults are resolved."""
from __future__ import annotations

import pytest

from pond.recipe import RecipeError, load_recipe, parse_recipe

GOOD = """\
name: t
input: {path: data/*.jsonl}
seed: 3
steps:
  - exact_dedup: {}
  - holdout: {n: 5}
"""


def test_defaults_are_resolved_and_round_trip():
    r = parse_recipe(GOOD, "r.yaml")
    assert [s.kind for s in r.steps] == ["exact_dedup", "holdout"]
    assert r.steps[0].options.lowercase is True  # a default, written back
    again = parse_recipe(r.to_yaml(), "again.yaml")
    assert again.dump() == r.dump() and again.digest() == r.digest()


@pytest.mark.parametrize("text, line, phrase", [
    (GOOD + "colour: blue\n", 7, "colour: unknown key"),
    (GOOD.replace("exact_dedup: {}", "exact_dedup: {lowercas: true}"), 5, "steps[0].exact_dedup.lowercas: unknown key"),
    (GOOD.replace("{n: 5}", "{n: -1}"), 6, "steps[1].holdout.n: Input should be greater than or equal to 1"),
    (GOOD.replace("exact_dedup: {}", "frobnicate: {}"), 5, "unknown step kind 'frobnicate'"),
    (GOOD.replace("seed: 3", "seed: three"), 3, "seed: Input should be a valid integer"),
    (GOOD.replace("input: {path: data/*.jsonl}", "input: {path: x, format: xml}"), 2, "input.format"),
    ("name: [unclosed\n", 2, "not valid YAML"),
    ("- just\n- a list\n", 1, "a recipe is a YAML mapping"),
])
def test_errors_name_line_and_key(text, line, phrase):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    msg = str(err.value)
    assert msg.startswith(f"r.yaml:{line}: "), msg
    assert phrase in msg, msg


def test_several_problems_one_line_each():
    bad = GOOD.replace("seed: 3", "seed: x").replace("{n: 5}", "{n: 5, m: 1}")
    with pytest.raises(RecipeError) as err:
        parse_recipe(bad, "r.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(line.startswith("r.yaml:") for line in lines)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_env_vars_expand(monkeypatch):
    monkeypatch.setenv("POND_TEST_DIR", "/somewhere")
    r = parse_recipe(GOOD.replace("data/*.jsonl", "'${POND_TEST_DIR}/x.jsonl'"))
    assert r.input.path == "/somewhere/x.jsonl"


def test_shipped_recipes_validate():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml")):
        load_recipe(path)


def test_judge_of_its_own_output_needs_self_judge_and_calibration():
    text = GOOD + """  - synthesize: {generator: edge_cases, n: 2, teacher: t}
  - judge: {teacher: j%s}
teachers:
  t: {model: m}
  j: {model: m}
"""
    with pytest.raises(RecipeError) as err:
        parse_recipe(text % "", "r.yaml")
    assert str(err.value).count("\n") == 0
    assert "teacher 'j' is the model (m) that teacher 't' writes" in str(err.value) and "self_judge: true" in str(err.value)
    with pytest.raises(RecipeError, match="self_judge needs `calibrate: true`"):
        parse_recipe(text % ", self_judge: true, calibrate: false", "r.yaml")
    warnings = parse_recipe(text % ", self_judge: true", "r.yaml").warnings()
    assert len(warnings) == 1 and "self_judge: true" in warnings[0]
    assert parse_recipe(text % ", rows: real", "r.yaml").warnings() == []  # only real rows: not its own
    other = text.replace("  j: {model: m}", "  j: {model: other}")
    assert parse_recipe(other % "", "r.yaml").warnings() == []


def test_two_judges_into_one_column_are_warned():
    def warnings(steps: str) -> list[str]:
        return parse_recipe(GOOD + steps + "teachers:\n  j: {model: m}\n", "r.yaml").warnings()

    two = "  - judge: {teacher: j, min_score: null}\n  - judge: {teacher: j, rubric: complexity%s}\n"
    [w] = warnings(two % "")
    assert "'judge_score'" in w and "overwrites" in w
    assert warnings(two % ", column: complexity") == []
    # the synthetic rows then the real ones, into one column: each keeps the other's scores
    assert warnings("  - judge: {teacher: j, rows: synthetic}\n  - judge: {teacher: j, rows: real}\n") == []


def test_dpo_without_a_preference_pairs_step_is_one_line_naming_the_step():
    text = "name: x\ninput: {path: a.jsonl}\nsteps:\n  - exact_dedup: {}\ntrain:\n  method: dpo\n"
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    message = str(err.value)
    assert message.startswith("r.yaml:6: train.method: dpo trains on preference pairs")
    assert "add a `preference_pairs` step" in message and "\n" not in message
    with_step = text.replace("  - exact_dedup: {}\n", "  - exact_dedup: {}\n  - preference_pairs: {}\n")
    assert parse_recipe(with_step, "r.yaml").train.method == "dpo"
