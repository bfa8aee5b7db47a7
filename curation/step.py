"""What every curation/synthesis step shares: its context, its options base and rejection helper.

A step is a plain function `(df, options, ctx) -> (kept, rejected)`:
- `df` holds canonical records (curation.records) plus any extra columns;
- `options` is the step's pydantic model (a subclass of StepOptions);
- `kept` keeps every input column (and may add typed ones);
- `rejected` holds the removed rows with `stage` and `reason` columns (build it with `reject`).
Counts conserve: len(df) == len(kept) + len(rejected), except for steps that add rows
(generators), where len(kept) + len(rejected) == len(df) + attempted new rows.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from curation.settings import default_cache_dir, no_progress


class StepOptions(BaseModel):
    """Base for every step's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    def teacher_needed(self) -> str | None:
        """The teacher this step calls, if any: its `teacher` option, unless the options say it calls none."""
        return getattr(self, "teacher", None)


@dataclass
class StepContext:
    """What the runner hands a step besides its rows and options."""

    seed: int = 0
    cache_dir: Path = field(default_factory=default_cache_dir)
    run_dir: Path | None = None  # the run directory (teacher cache lives here)
    step_dir: Path | None = None  # this step's folder, for side files
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths in options resolve here
    # the run's teachers (synthesis.teachers.Teachers): `teachers.session(name)` is a ready client
    teachers: Any = None
    # track(iterable, description, total) wraps a loop in a progress bar (rich in the CLI).
    track: Callable[..., Iterator[Any]] = no_progress
    stats: dict[str, Any] = field(default_factory=dict)  # a step may add figures for stats.json
    # the rows each earlier step that embeds its rows (the step table's `embeds_rows`) read, in order:
    # synthesize `target: gaps` finds the raw pool whose vectors are cached here; empty outside a run
    embedded_inputs: list[Path] = field(default_factory=list)
    # rows a dedup step compares against and never drops (datatrove's `index_folder`): `pond update`
    # hands it the pond's rows; a new row that duplicates one is rejected, naming it in `duplicate_of`
    reference: Any = None  # a polars DataFrame, or None

    def resolve(self, path: str | Path) -> Path:
        """Options' paths: absolute, `run:NAME` (inside the run directory) or relative to the recipe."""
        return recipe_path(path, self.base_dir, self.run_dir)


def reject(df: pl.DataFrame, stage: str, reason: str | pl.Expr, **extra: pl.Expr | str) -> pl.DataFrame:
    """Mark rows as rejected by `stage` with a reason (a string or a per-row expression)."""
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    cols = [pl.lit(stage).alias("stage"), reason_expr.cast(pl.Utf8).alias("reason")]
    cols += [(pl.lit(v) if isinstance(v, str) else v).alias(k) for k, v in extra.items()]
    return df.with_columns(cols)


def split(df: pl.DataFrame, keep_mask: pl.Series | pl.Expr, stage: str, reason: str | pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split by a boolean mask: True rows are kept, the rest rejected with `reason`."""
    marked = df.with_columns((keep_mask if isinstance(keep_mask, pl.Expr) else pl.lit(keep_mask)).alias("__keep"))
    kept = marked.filter(pl.col("__keep")).drop("__keep")
    rejected = reject(marked.filter(~pl.col("__keep")).drop("__keep"), stage, reason)
    return kept, rejected


def recipe_path(path: str | Path, base_dir: Path | None, run_dir: Path | None = None) -> Path:
    """A path a recipe names: absolute, `~/...`, `run:NAME` (inside the run directory) or relative to the
    recipe's folder (`base_dir`; None: as given)."""
    if isinstance(path, str) and path.startswith("run:"):
        if run_dir is None:
            raise ValueError(f"{path}: `run:` paths need a run directory")
        return Path(run_dir) / path[4:]
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p
