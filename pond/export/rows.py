"""Which rows of a run `pond export` writes: the curated set, its synthetic rows, every rejection,
the held-out set, or one step's kept set. Read through pond.layout, as `pond inspect` does."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from curation.errors import PondError
from curation.records import synthetic_source
from pond import layout
from pond.executors.shards import read_output

ROW_SETS = ("curated", "synthetic", "rejected", "heldout")


class ExportError(PondError, ValueError):
    """`pond export` cannot do what was asked: str() is one line naming the run, file or option."""


def _step_kept(run: Path, name: str) -> Path:
    steps = layout.step_dirs(run)
    exact = [d for d in steps if d.name == name]
    by_kind = [d for d in steps if d.name.split("-", 1)[-1] == name]
    found = exact or by_kind
    if len(found) > 1:
        raise ExportError(f"{run}: --rows {name!r} names {len(found)} steps ({', '.join(d.name for d in found)}); "
                          f"give the folder name")
    if not found:
        known = ", ".join([*ROW_SETS, *(d.name for d in steps)])
        raise ExportError(f"{run}: --rows {name!r} is not a row set or a step of this run (known: {known})")
    kept = found[0] / layout.KEPT
    if not (found[0] / layout.DONE).exists() or not kept.exists():
        raise ExportError(f"{found[0]}: the step has not finished (no DONE); rerun `pond run` first")
    return kept


def _need(path: Path, hint: str) -> Path:
    if not path.exists():
        raise ExportError(f"{path}: not found ({hint})")
    return path


def select_rows(run: Path, rows: str, heldout: Path | None = None) -> tuple[pl.DataFrame, Path]:
    """(the rows, the file they came from) for a row set or a step's name."""
    if not layout.is_run(run):
        raise ExportError(f"{run}: not a pond run directory (no steps/)")
    if rows == "curated":
        path = _need(run / layout.CURATED, "the run has not finished curation")
        return read_output(path), path
    if rows == "synthetic":
        path = _need(run / layout.CURATED, "the run has not finished curation")
        df = read_output(path)
        return df.filter(synthetic_source(pl.col("source"))), path
    if rows == "rejected":
        frames = [read_output(d / layout.REJECTED) for d in layout.step_dirs(run) if (d / layout.REJECTED).exists()]
        frames = [f for f in frames if f.height]
        # every step's rejections, in step order, each with its `stage` and `reason`
        return (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()), layout.steps_dir(run)
    if rows == "heldout":
        path = heldout or _need(run / layout.HELDOUT, "the run has no holdout step; pass --heldout FILE")
        if heldout is not None and path.suffix != ".parquet":
            from curation.ingest import IngestError, read_records

            try:
                return read_records(str(path))[0], path
            except IngestError as exc:
                raise ExportError(str(exc)) from None
        return read_output(_need(path, "--heldout")), path
    path = _step_kept(run, rows)
    return read_output(path), path
