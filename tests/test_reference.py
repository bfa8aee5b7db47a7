"""The recipe reference in docs/ is generated from the option models and must not drift."""
from pathlib import Path

from pond.reference import render
from pond.steps import STEPS


def test_recipe_reference_is_up_to_date():
    committed = (Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md").read_text()
    assert committed == render(), "regenerate: python -m pond.reference > docs/recipe-reference.md"


def test_every_option_is_described():
    for kind, spec in STEPS.items():
        for name, field in spec.options_model().model_fields.items():
            assert field.description, f"{kind}.{name} has no description"
