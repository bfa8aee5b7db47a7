"""The taxonomy of edge cases the `edge_cases` generator writes: which kinds exist and how each is made.

`typos`, `long_input` and `prompt_injection` are a seeded transformation of a real prompt of the
pond (synthesis/edge_transforms.py): no model writes them. Every other built-in kind is a rewrite
by the writer model, with its own prompt, `synthesis/prompts/edge_kinds/<kind>.txt`; a recipe adds
its own kinds as `{name, description}` (the generic prompt `_custom.txt` with the description
filled in) or `{name, prompt}` (a prompt of its own: a file path or inline text). Every prompt may
use `$examples` (real prompts of the pond, few-shot), `$seed` (the real prompt the new case is built
on) and `$description`.

`other_language` is offered only with `writer_translates: true`: a writer that cannot translate
writes another language's look-alike (issue 26: "Checho a ese eso, dove no tenga mucho."), so it is
left out of the default kinds and refused in one line without the flag.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from synthesis.edge_transforms import TRANSFORMS
from synthesis.prompts import PROMPT_DIR, load_text

KINDS_DIR = PROMPT_DIR / "edge_kinds"

# name -> what the kind is (the docs and `pond.reference` show these)
BUILTIN_KINDS: dict[str, str] = {
    "ambiguous": "a request that can be read in two ways; the assistant should ask which one is meant",
    "missing_information": "a request missing a detail the answer needs; the assistant should ask for it",
    "contradictory": "two requirements that contradict each other; the assistant should point it out",
    "out_of_scope": "a request the assistant should politely decline (harmful, private, impossible)",
    "prompt_injection": "a real request with an injected line that tries to take over the assistant; the "
                        "assistant should answer the request and ignore the injection",
    "long_input": "a real request after paragraphs of pasted background; the assistant should find it and answer it",
    "typos": "a real request typed in a hurry (typos, no capitals); the assistant should understand it anyway",
    "other_language": "the request written in Spanish, French or German instead of English",
}
TRANSLATED = "other_language"  # the kind that needs a writer that really translates
# the kinds a recipe gets without `kinds:`: every built-in kind a CPU writer can make
DEFAULT_KINDS: dict[str, str] = {k: v for k, v in BUILTIN_KINDS.items() if k != TRANSLATED}


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
            if spec not in BUILTIN_KINDS:
                raise ValueError(f"unknown edge-case kind {spec!r}; the built-in kinds are "
                                 f"{', '.join(BUILTIN_KINDS)} (or give your own as {{name, description}})")
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


def translation_error(specs: list[KindSpec] | None, writer_translates: bool) -> str | None:
    """Why the kinds cannot be written (other_language without a writer that translates), or None."""
    if writer_translates or not any(kind_name(s) == TRANSLATED for s in specs or []):
        return None
    return (f"edge-case kind {TRANSLATED!r} needs a writer that really translates; the CPU writers here "
            f"(SmolLM2-135M, Qwen2.5-Coder-1.5B) do not, so it is not offered: leave it out, or set "
            f"`writer_translates: true` with a writer that does (a 7B+ model on a GPU)")


def kind_name(spec: KindSpec) -> str:
    return spec if isinstance(spec, str) else spec.name


def transformed(spec: KindSpec) -> bool:
    """A built-in kind made from a real prompt by a transformation (synthesis/edge_transforms.py), no model."""
    return isinstance(spec, str) and spec in TRANSFORMS


def kind_template(spec: KindSpec, resolve: Callable[[str], Path] = Path) -> tuple[str, str]:
    """(template, description) of a kind; the template's $description is the second value. A
    transformed kind has no template (no model writes it): ""."""
    if transformed(spec):
        return "", BUILTIN_KINDS[spec]
    if isinstance(spec, str):
        return (KINDS_DIR / f"{spec}.txt").read_text(encoding="utf-8").strip(), BUILTIN_KINDS[spec]
    if spec.prompt:
        return load_text(spec.prompt, resolve=resolve), spec.description or spec.name.replace("_", " ")
    return (KINDS_DIR / "_custom.txt").read_text(encoding="utf-8").strip(), spec.description or ""


def uses(template: str, name: str) -> bool:
    return re.search(rf"\$(?:{name}\b|\{{{name}\}})", template) is not None
