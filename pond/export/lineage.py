"""What an export says about where its rows came from: the run's manifest.json and each step's
stats.json (read through pond.layout), plus the hash of the file the rows were taken from."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pond import __version__, layout


def recipe_name(run: Path) -> str:
    name = layout.read_json(run / layout.MANIFEST).get("recipe")
    if not name and (run / layout.RECIPE).exists():
        name = (yaml.safe_load((run / layout.RECIPE).read_text()) or {}).get("name")
    return name or Path(run).resolve().name


def dataset_name(run: Path, rows: str) -> str:
    """A name trainers accept as a dataset/task key: pond_<recipe>[_<rows>], letters, digits, `_`."""
    base = re.sub(r"[^0-9A-Za-z_]+", "_", f"pond_{recipe_name(run)}" + ("" if rows == "curated" else f"_{rows}"))
    return base.strip("_")


def lineage(run: Path, rows: str, source: Path, n_rows: int) -> dict[str, Any]:
    from curation.store import file_digest

    manifest = layout.read_json(run / layout.MANIFEST)
    steps = []
    for r in layout.funnel(run):
        steps.append({"step": r["step"], "in": r.get("in"), "kept": r.get("out"), "rejected": r.get("rejected"),
                      "reasons": r.get("reasons", {})})
    return {
        "run": str(Path(run).resolve()),
        "recipe": recipe_name(run),
        "recipe_hash": manifest.get("recipe_hash"),
        "seed": manifest.get("seed"),
        "pond_version": manifest.get("pond_version", __version__),
        "exported_by": __version__,
        "rows": rows,
        "n_rows": n_rows,
        "source_file": str(source),
        "source_hash": file_digest(source) if Path(source).is_file() or Path(source).is_dir() else None,
        "inputs": manifest.get("inputs", {}),
        "steps": steps,
    }


def comment_block(info: dict[str, Any]) -> str:
    """The lineage as `#` comment lines, for the config files trainers read (they allow no extra keys)."""
    lines = [f"pond export of run {info['run']}", f"recipe {info['recipe']} (hash {info['recipe_hash']}), "
             f"seed {info['seed']}, pond {info['pond_version']}",
             f"rows: {info['rows']} ({_written(info)}) from {info['source_file']} (hash {info['source_hash']})"]
    return "".join(f"# {line}\n" for line in lines)


def _written(info: dict[str, Any]) -> str:
    """`179`, or `177 of 179 written; 2 listed in problems.jsonl` once the data file is written."""
    if not info.get("problems"):
        return str(info["n_rows"])
    return f"{info['written']} of {info['n_rows']} written; {info['problems']} listed in problems.jsonl"
