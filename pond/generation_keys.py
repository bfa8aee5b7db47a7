"""The dedup keys each generation keeps, so that a drop compares itself with the pond's keys and never
re-reads the pond's rows (docs/continuous-curation.md, "Keys kept per generation").

A dedup step with a keyed form (curation.reference_keys.KEYED: exact and MinHash dedup) keeps, in its
folder of each generation, `keys-<key>.parquet`: the keys of every row that entered it there. <key>
is derived from the step's fingerprint (the one its DONE holds: it chains the generation's input files,
every earlier step's options and the seed), the options the keys were computed with and KEYS_FORMAT, so
keys of another recipe, another generation or an older format are never read, and a step that runs
again (the runner clears its folder) leaves none behind. A drop writes its own keys when its step is
done; a run made by `pond run` has none until `write_generation` is called on it (by the first drop,
which computes them from each step's input once, or by a hook after the run).

What a drop's MinHash step reads besides keys: the Jaccard of pairs earlier generations verified (their
step folder's pairs.parquet) and the texts of the few reference rows in new candidate pairs, by id.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from curation import store
from curation.reference_keys import KEYED, keys_in_batches
from curation.step import StepContext
from pond import layout
from pond.executors.local import iter_rows
from pond.executors.shards import list_shards
from pond.recipe import Recipe, Step
from pond.steps import STEPS

KEYS_FORMAT = 1  # raise when what a keys file holds changes: older files are then not read
PAIRS = "pairs.parquet"  # curation.minhash's verified candidate pairs, in its step folder


def keyed_form(kind: str) -> tuple[Callable, Callable] | None:
    """(keys of rows, dedup against keys) of a step kind, or None where it has no keyed form."""
    return KEYED.get(STEPS[kind].load()[1])


def step_folders(gen: Path, index: int, step: Step) -> tuple[Path, Path] | None:
    """(the folder of step `index` in generation `gen`, the folder whose kept rows entered it); None if
    the step did not finish there."""
    this = layout.step_dir(gen, layout.step_name(index, step.kind))
    names = [d.name for d in layout.step_dirs(gen)]
    if this.name not in names or not store.finished(this):
        return None
    return this, layout.step_dir(gen, names[names.index(this.name) - 1])


def keys_file(step_dir: Path, step: Step, seed: int) -> Path | None:
    """Where a finished step folder keeps its keys (None: not finished)."""
    fingerprint = layout.read_json(step_dir / layout.STATS).get("fingerprint")
    if not fingerprint or not store.finished(step_dir, fingerprint):
        return None
    key = store.key_of([fingerprint, step.options.model_dump(mode="json"), seed, KEYS_FORMAT])
    return step_dir / f"keys-{key[:16]}.parquet"


def step_keys(gen: Path, index: int, step: Step, ctx: StepContext) -> pl.DataFrame | None:
    """The keys of every row that entered step `index` in `gen`: read from its keys file, else computed from
    the step's input a batch at a time and written; None if the step did not finish there."""
    folders = step_folders(gen, index, step)
    if folders is None:
        return None
    path = keys_file(folders[0], step, ctx.seed)
    if path.exists():
        return pl.read_parquet(path)
    rows = folders[1] / layout.KEPT
    empty = pl.DataFrame(schema=pl.read_parquet_schema(list_shards(rows)[0]))
    keys = keys_in_batches(keyed_form(step.kind)[0], iter_rows(rows), step.options, ctx, empty)
    store.write_parquet(keys, path)
    return keys


def write_step_keys(step_dir: Path, step: Step, seed: int, keys: pl.DataFrame) -> None:
    """A drop's own keys, once its step is done (its DONE names the fingerprint they are filed under)."""
    path = keys_file(step_dir, step, seed)
    if path is not None:
        store.write_parquet(keys, path)


def write_generation(gen: Path, recipe: Recipe, ctx: StepContext) -> int:
    """Every keyed dedup step's keys of a finished generation (a run just made by `pond run`); returns how
    many steps have keys."""
    return sum(step_keys(gen, i, s, ctx) is not None
               for i, s in enumerate(recipe.steps, start=1) if keyed_form(s.kind) is not None)


def _texts_reader(sources: list[Path], step: Step) -> Callable[[list[str]], pl.DataFrame]:
    """ids -> the compared columns of those reference rows, found in `sources` (step outputs) by id."""
    opts = step.options
    columns = ["id", opts.column] + ([opts.score_column] if getattr(opts, "keep", "first") == "quality" else [])

    def texts_of(ids: list[str]) -> pl.DataFrame:
        wanted = pl.Series(ids, dtype=pl.Utf8).implode()
        frames = [pl.scan_parquet(list_shards(src)).filter(pl.col("id").is_in(wanted))
                  .select([c for c in columns if c in pl.read_parquet_schema(list_shards(src)[0])]).collect()
                  for src in sources] if ids else []
        if not frames:
            return pl.DataFrame(schema={c: pl.Utf8 for c in columns})
        return pl.concat(frames, how="diagonal_relaxed")

    return texts_of


def reference(run: Path, drop: Path, index: int, step: Step, ctx: StepContext):
    """What a drop's keyed dedup step compares against, as keys: the held-out set's (computed: it is small),
    then those of every row that entered this step in each earlier generation, oldest first; a reader of
    those rows' texts by id; and the pairs they verified. Raises LookupError naming a generation
    where the step did not finish."""
    keys_of = keyed_form(step.kind)[0]
    frames, sources, pairs = [], [], []
    heldout = Path(run) / layout.HELDOUT
    if heldout.exists():
        frames.append(keys_of(pl.read_parquet(heldout), step.options, ctx))
        sources.append(heldout)
    for gen in layout.curated_generations(run):
        if gen == drop:
            continue
        keys = step_keys(gen, index, step, ctx)
        if keys is None:
            raise LookupError(gen)
        this, prev = step_folders(gen, index, step)
        frames.append(keys)
        sources.append(prev / layout.KEPT)
        # a pair's Jaccard depends on the options (ngram, shingle): only the same step's are reused
        same = layout.read_json(this / layout.STATS).get("options") == step.options.model_dump(mode="json")
        if same and (this / PAIRS).exists():
            pairs.append(pl.read_parquet(this / PAIRS, columns=["id_a", "id_b", "jaccard"]))
    none = pl.DataFrame(schema={"id_a": pl.Utf8, "id_b": pl.Utf8, "jaccard": pl.Float64})
    known = pl.concat(pairs) if pairs else none
    ref = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return ref, _texts_reader(sources, step), known
