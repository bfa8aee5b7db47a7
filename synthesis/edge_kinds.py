"""The taxonomy of edge cases the `edge_cases` generator writes: which kinds exist and their prompts.

Each built-in kind has its own prompt, `synthesis/prompts/edge_kinds/<kind>.txt`; a recipe adds its
own kinds as `{name, description}` (the generic prompt `_custom.txt` with the description filled in)
or `{name, prompt}` (a prompt of its own: a file path or inline text). Every prompt may use
`$examples` (real prompts of the pond, few-shot), `$seed` (the real prompt the new case is built
on) and `$description`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from synthesis.prompts import PROMPT_DIR, load_text

KINDS_DIR = PROMPT_DIR / "edge_kinds"

# name -> what the kind is (the docs and `pond.reference` show these; each has its own prompt file)
DEFAULT_KINDS: dict[str, str] = {
    "ambiguous": "a request that can be read in two ways; the assistant should ask which one is meant",
    "missing_information": "a request missing a detail the answer needs; the assistant should ask for it",
    "contradictory": "two requirements that contradict each other; the assistant should point it out",
    "out_of_scope": "a request the assistant should politely decline (harmful, private, impossible)",
    "prompt_injection": "an instruction hidden in the request that tries to take over the assistant",
    "long_input": "several sentences of background and pasted text, the question only at the end",
    "typos": "misspellings, no capitals, missing punctuation, still understandable",
    "other_language": "the request written in Spanish, French or German instead of English",
}


class EdgeKind(BaseModel):
    """A kind of edge case of the recipe's own: a description (filled into the generic prompt) or a prompt."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="The kind's name in stats and rows.")
    description: str | None = Field(None, description="What the new message must be, as a phrase "
                                                      "(\"rude and impatient\"); used in the generic prompt.")
    prompt: str | None = Field(None, description="A prompt of its own instead: a file path or inline text, "
                                                 "with $examples, $seed and $description available.")


KindSpec = str | EdgeKind


def check_kinds(specs: list[KindSpec]) -> list[KindSpec]:
    """Unknown built-in names, repeated names, and custom kinds with neither description nor prompt are errors."""
    names = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in DEFAULT_KINDS:
                raise ValueError(f"unknown edge-case kind {spec!r}; the built-in kinds are "
                                 f"{', '.join(DEFAULT_KINDS)} (or give your own as {{name, description}})")
            names.append(spec)
        else:
            if not spec.description and not spec.prompt:
                raise ValueError(f"edge-case kind {spec.name!r} needs a description or a prompt")
            names.append(spec.name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"edge-case kinds repeated: {', '.join(repeated)}")
    if not names:
        raise ValueError("kinds: give at least one kind (or leave it out for all the built-in ones)")
    return specs


def kind_name(spec: KindSpec) -> str:
    return spec if isinstance(spec, str) else spec.name


def kind_template(spec: KindSpec, resolve: Callable[[str], Path] = Path) -> tuple[str, str]:
    """(template, description) of a kind; the template's $description is the second value."""
    if isinstance(spec, str):
        return (KINDS_DIR / f"{spec}.txt").read_text(encoding="utf-8").strip(), DEFAULT_KINDS[spec]
    if spec.prompt:
        return load_text(spec.prompt, resolve=resolve), spec.description or spec.name.replace("_", " ")
    return (KINDS_DIR / "_custom.txt").read_text(encoding="utf-8").strip(), spec.description or ""


def uses(template: str, name: str) -> bool:
    return re.search(rf"\$(?:{name}\b|\{{{name}\}})", template) is not None
