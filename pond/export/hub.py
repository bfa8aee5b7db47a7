"""`--to hf`: a `datasets` folder (`save_to_disk`, loads with `datasets.load_from_disk`) with every
column of the rows, and a dataset card (README.md) giving their lineage."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import yaml

CARD = "README.md"


def _card(info: dict[str, Any], columns: list[str], name: str) -> str:
    front = {"pretty_name": name, "tags": ["pond", f"pond-{info['rows']}"],
             "pond": {"recipe": info["recipe"], "recipe_hash": info["recipe_hash"], "seed": info["seed"],
                      "rows": info["rows"], "source_hash": info["source_hash"]}}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# {name}", "",
             f"{info['n_rows']} rows ({info['rows']}) of the pond run `{info['run']}`, exported by pond "
             f"{info['exported_by']}. Load with `datasets.load_from_disk(\"<this folder>\")`.", "",
             "## Lineage", "",
             f"- recipe `{info['recipe']}`, recipe hash `{info['recipe_hash']}`, seed {info['seed']}, "
             f"pond {info['pond_version']}",
             f"- rows taken from `{info['source_file']}` (blake2b `{info['source_hash']}`)", "",
             "Input files:", "", "| file | blake2b |", "|---|---|"]
    lines += [f"| `{path}` | `{digest}` |" for path, digest in info["inputs"].items()] or ["| (none recorded) | |"]
    lines += ["", "## Steps", "", "| step | in | kept | rejected | reasons |", "|---|---:|---:|---:|---|"]
    for s in info["steps"]:
        reasons = ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) or "-"
        lines.append(f"| {s['step']} | {s['in']} | {s['kept']} | {s['rejected']} | {reasons} |")
    lines += ["", "## Columns", "", ", ".join(f"`{c}`" for c in columns), ""]
    return "\n".join(lines)


def write_hf(df: pl.DataFrame, out: Path, info: dict[str, Any], name: str) -> list[Path]:
    import datasets

    dataset = datasets.Dataset.from_polars(df)  # every column rides along
    dataset.save_to_disk(str(out))
    (out / CARD).write_text(_card(info, df.columns, name), encoding="utf-8")
    return [out, out / CARD]
