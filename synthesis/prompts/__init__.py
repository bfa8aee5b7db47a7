"""Prompt templates as plain text files: read them here, copy and replace them in a recipe.

Templates use `$name` placeholders (string.Template), so JSON braces need no escaping. A recipe
option naming a prompt accepts a built-in name (`edge_cases`, `helpfulness`), a path to a file
(`prompts/mine.txt`, resolved against the recipe's folder), or the text itself (anything with a
space or newline in it).
"""
from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

PROMPT_DIR = Path(__file__).parent
RUBRIC_DIR = PROMPT_DIR / "rubrics"


def builtin_names(folder: Path = PROMPT_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.txt"))


def load_text(spec: str, folder: Path = PROMPT_DIR, resolve: Callable[[str], Path] = Path) -> str:
    """The text of a prompt given as a built-in name, a file path or inline text."""
    if "\n" in spec or (" " in spec and not spec.endswith((".txt", ".md"))):
        return spec
    if (folder / f"{spec}.txt").is_file():
        return (folder / f"{spec}.txt").read_text(encoding="utf-8").strip()
    path = resolve(spec)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    raise ValueError(f"unknown prompt {spec!r}: not a file, and the built-in ones are "
                     f"{', '.join(builtin_names(folder))}")


def render(template: str, **values: object) -> str:
    """Fill `$name` placeholders; a placeholder without a value is an error naming it."""
    try:
        return string.Template(template).substitute({k: str(v) for k, v in values.items()})
    except KeyError as e:
        raise ValueError(f"prompt template uses ${e.args[0]}, which is not one of "
                         f"{', '.join('$' + k for k in values)}") from None
