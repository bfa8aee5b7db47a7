"""The run folder's layout: where a run keeps each file, and how its step summaries are read.

    runs/NAME/recipe.yaml, steps/NN-kind/{kept,rejected}.parquet + stats.json + DONE,
    curated.parquet, heldout.parquet (if a holdout step), adapter/, eval.json, report.md,
    experiment/, manifest.json, ledger.jsonl, report.html, export/FORMAT[-ROWS]/ (pond export)

The runner writes this layout, and the pipeline's summary and `pond inspect` read it; none of them
spells a folder or file name of its own. A name another module writes (the ledger's, the teacher
cache's) is defined there and named here. A step output (kept/rejected) is a Parquet file, or a
folder of shards written by the ray executor (pond.executors.shards); polars reads either. What a
resume trusts is written and marked through curation.store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from curation import store
from curation.store import read_json  # the run folder's readers call it layout.read_json
from evaluation import files as evaluation_files
from pond.ledger import LEDGER, read as read_ledger
from synthesis.cache import CACHE_FILE as TEACHER_CACHE

STEPS = "steps"
INGEST = "00-ingest"
PARTS = "parts"  # inside ingest's folder while it runs: its batches, combined into kept/rejected, then removed
KEPT = "kept.parquet"
REJECTED = "rejected.parquet"
STATS = "stats.json"
DONE = store.MARKER  # a step's (and a drop's) finished marker
RECIPE = "recipe.yaml"
CURATED = "curated.parquet"
HELDOUT = "heldout.parquet"
ADAPTER = "adapter"
EXPERIMENT = "experiment"
EVAL, EVAL_DONE, REPORT = evaluation_files.EVAL, evaluation_files.EVAL_DONE, evaluation_files.REPORT
ADAPTER_CONFIG = evaluation_files.ADAPTER_CONFIG
REPORT_HTML = "report.html"  # the run to look at (pond.report_html)
MANIFEST = "manifest.json"
EXPORT = "export"
# what the pipeline's summary points at, when the run has it
RESULT_FILES = (EVAL, REPORT, f"{EXPERIMENT}/{REPORT}", f"{EXPERIMENT}/plot.png", REPORT_HTML)


def export_dir(run: Path, fmt: str, rows: str) -> Path:
    """Where `pond export` writes by default: export/FORMAT (the curated set) or export/FORMAT-ROWS."""
    return Path(run) / EXPORT / (fmt if rows == "curated" else f"{fmt}-{rows}")


def step_name(index: int, kind: str) -> str:
    return f"{index:02d}-{kind}"


def step_kind(name: str) -> str:
    """The kind of a step folder's step (`07-pii` -> `pii`)."""
    return name.partition("-")[2]


def steps_dir(run: Path) -> Path:
    return Path(run) / STEPS


def step_dir(run: Path, name: str) -> Path:
    return steps_dir(run) / name


def ingest_output(run: Path) -> Path:
    """Every row that entered curation (after ingest's validity checks)."""
    return step_dir(run, INGEST) / KEPT


def run_adapter(run: Path) -> Path | None:
    """The run's own trained adapter (adapter/), when training saved one."""
    own = Path(run) / ADAPTER
    return own if (own / ADAPTER_CONFIG).exists() else None


def is_run(run: Path) -> bool:
    return steps_dir(run).is_dir()


def step_dirs(run: Path) -> list[Path]:
    """The run's step folders, in step order."""
    steps = steps_dir(run)
    return sorted(d for d in steps.iterdir() if d.is_dir()) if steps.is_dir() else []


def is_done(step: Path, fingerprint: str) -> bool:
    """A finished step: its DONE holds this fingerprint (resume skips it)."""
    return store.finished(step, fingerprint)


def funnel(run: Path) -> list[dict[str, Any]]:
    """One row per step folder: its name, done or unfinished, and its stats.json."""
    rows = []
    for d in step_dirs(run):
        stats = read_json(d / STATS)
        done = bool(stats) and store.finished(d)
        rows.append({"step": d.name, "status": "done" if done else "unfinished", **stats})
    return rows


def reason_tag() -> pl.Expr:
    """A rejection reason without its detail (`exact_duplicate_of:<id>` -> `exact_duplicate_of`),
    for counting; `tag_of` is the same rule on one string."""
    return pl.col("reason").str.split(":").list.first()


def tag_of(reason: str) -> str:
    return reason.split(":", 1)[0]


def reason_counts(rejected: pl.DataFrame, top: int = 20) -> dict[str, int]:
    """The `reasons` of stats.json: rejections by tag, most frequent first."""
    if rejected.is_empty() or "reason" not in rejected.columns:
        return {}
    tags = rejected.select(reason_tag().alias("r"))
    counts = tags.group_by("r").len().sort(["len", "r"], descending=[True, False]).head(top)
    return {r: int(n) for r, n in counts.iter_rows()}


# -- continuous curation (pond update): data drops and adapter versions ----------------------------
#
#    runs/NAME/drops/NNN/inputs.json, steps/..., curated.parquet (the drop's own kept rows),
#        drift.json, retrain.json, DONE;   runs/NAME/lineage.parquet (id -> drop of every curated row);
#    runs/NAME/adapters/vN/adapter/, card.json

DROPS = "drops"
DROP_INPUTS = "inputs.json"
DRIFT = "drift.json"
RETRAIN = "retrain.json"
LINEAGE = "lineage.parquet"
ADAPTERS = "adapters"
VERSION_CARD = "card.json"
MLFLOW_MODEL_SUFFIX = "-adapter"


DROPS_REPORT = "report.md"  # drops/report.md: the run report's "Data drops" section


def drops_dir(run: Path) -> Path:
    return Path(run) / DROPS


def drop_dir(run: Path, number: int) -> Path:
    return drops_dir(run) / f"{number:03d}"


def drop_number(drop: Path) -> int:
    return int(Path(drop).name)


def drop_dirs(run: Path) -> list[Path]:
    """The run's drop folders, oldest first."""
    d = drops_dir(run)
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def curated_generations(run: Path) -> list[Path]:
    """Generations whose curation finished: the run, then every drop with its own curated.parquet."""
    return [Path(run)] + [d for d in drop_dirs(run) if (d / CURATED).exists()]


def run_base_dir(run: Path) -> Path:
    """The folder the run's recipe paths are relative to, as `pond run` recorded it in the ledger
    (older runs did not: then the current folder)."""
    for event in reversed(read_ledger(run)):
        if event.get("event") == "run" and event.get("base_dir"):
            return Path(event["base_dir"])
    return Path.cwd()


def generations(run: Path) -> list[Path]:
    """Every generation of the pond, oldest first: the run itself (generation 0), then its drops.
    Each has the same step folders (`steps/NN-kind/`), since every drop runs the run's recipe."""
    return [Path(run)] + drop_dirs(run)


def generation_number(run: Path, gen: Path) -> int:
    return 0 if Path(gen) == Path(run) else drop_number(gen)


def final_kept(gen: Path) -> Path:
    """A generation's own curated rows: the kept rows of its last step folder."""
    dirs = step_dirs(gen)
    return dirs[-1] / KEPT


def adapters_dir(run: Path) -> Path:
    return Path(run) / ADAPTERS


def version_dir(run: Path, version: int) -> Path:
    return adapters_dir(run) / f"v{version}"


def version_dirs(run: Path) -> list[Path]:
    """Adapter versions trained by the retrain rule, oldest first (v1, v2, ... by number)."""
    d = adapters_dir(run)
    found = [p for p in d.iterdir() if p.is_dir() and p.name[:1] == "v" and p.name[1:].isdigit()] if d.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[1:]))
