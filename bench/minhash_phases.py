"""`pond run` with its phases timed: wraps the functions each phase runs in, then runs the pond CLI.

    python bench/minhash_phases.py PHASES.json run RECIPE --out RUN --no-train --fresh

Writes {phase: [wall seconds, CPU seconds]} to PHASES.json at exit (CPU: this process, every thread).
A phase nested in another is counted in both (`ingest` holds `ingest: read rows`, ...). Phases marked
`(per thread, summed)` run inside the signature threads: their wall and CPU seconds are each thread's own,
added over threads (more than the wall clock saw when two threads ran at once). Parquet writes are named by
the file they write. Names that a later pond no longer has are left out, never an error: the wrappers
change nothing but the clock.
bench/minhash.py --phases runs it; `python -m cProfile -o OUT -m pond.cli run ...` is the finer tool.
"""
from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path

T0, C0 = time.perf_counter(), time.process_time()
PHASES: dict[str, list[float]] = {}


def _add(name: str, wall: float, cpu: float) -> None:
    acc = PHASES.setdefault(name, [0.0, 0.0])
    acc[0] += wall
    acc[1] += cpu


def _timed(fn, name: str):
    def timed(*args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - w, time.process_time() - c)
    return timed


def _timed_iter(fn, name: str):
    """A generator function whose own time (between the items it yields) is counted."""
    def timed(*args, **kwargs):
        items = fn(*args, **kwargs)
        while True:
            w, c = time.perf_counter(), time.process_time()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                _add(name, time.perf_counter() - w, time.process_time() - c)
            yield item
    return timed


def _timed_thread(fn, name: str):
    """A function that runs in worker threads: its own thread's CPU seconds, summed over calls."""
    def timed(*args, **kwargs):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - w, time.thread_time() - c)
    return timed


def _timed_write(fn, name: str):
    """store.write_parquet(df, path): one phase per written file (its step folder and name)."""
    def timed(df, path, *args, **kwargs):
        return _timed(fn, f"{name} {Path(path).parent.name}/{Path(path).name}")(df, path, *args, **kwargs)
    return timed


WRAPPERS = {"plain": _timed, "generator": _timed_iter, "thread": _timed_thread, "write": _timed_write}


def wrap(owner, attr: str, name: str, *, how: str = "plain", static: bool = False) -> None:
    fn = getattr(owner, attr, None)
    if fn is None:
        return
    timed = WRAPPERS[how](fn, name)
    setattr(owner, attr, staticmethod(timed) if static else timed)


def instrument() -> None:
    import curation.ingest as ingest
    import curation.minhash as mh
    import curation.store as store
    import pond.pipeline as pipeline
    import pond.runner as runner

    for owner, attr, name, kw in (
            (runner.Runner, "ingest", "ingest", {}),
            (runner.Runner, "_ingest_local", "ingest: rows and part files", {}),
            (runner, "iter_batches", "ingest: read rows (parse, layout, ids, frames)", {"how": "generator"}),
            (ingest, "_parse_json", "ingest: read rows: JSON parse", {}),
            (ingest, "check_row", "ingest: read rows: Unicode rule (curation.row_checks)", {}),
            (ingest, "normalise", "ingest: read rows: layout (curation.layouts)", {}),
            (ingest, "make_id", "ingest: read rows: ids", {}),
            (ingest, "_records_frame", "ingest: read rows: frames", {}),
            (runner.Runner, "_combine", "ingest: combine part files", {"static": True}),
            (store, "file_digest", "file digests", {}),
            (runner, "output_digest", "file digests", {}),
            (runner.Runner, "run_step", "minhash step", {}),
            (runner, "read_output", "minhash step: read its input", {}),
            (mh, "candidate_pairs", "minhash: shingles, signatures, bands", {}),
            (mh, "shingle_hashes", "minhash: shingle hashes (per thread, summed)", {"how": "thread"}),
            (mh, "signatures", "minhash: signatures (per thread, summed)", {"how": "thread"}),
            (mh, "verify_pairs", "minhash: exact verification", {}),
            (mh, "_cluster_info", "minhash: clusters", {}),
            (mh, "_write_pairs", "minhash: pairs.parquet", {}),
            (mh, "split_near_duplicates", "minhash: kept and rejected frames", {}),
            (store, "write_parquet", "Parquet written:", {"how": "write"}),
            (store, "copy_file", "curated.parquet copied", {}),
            (pipeline, "write_manifest", "manifest", {}),
            (pipeline, "write_report_html", "report.html", {})):
        wrap(owner, attr, name, **kw)


def main() -> None:
    out = sys.argv[1]

    def write() -> None:
        _add("whole process (after interpreter start)", time.perf_counter() - T0, time.process_time() - C0)
        with open(out, "w") as f:
            json.dump({k: [round(v, 3) for v in vs] for k, vs in PHASES.items()}, f, indent=1)

    atexit.register(write)
    instrument()
    from pond.cli import entry

    _add("imports", time.perf_counter() - T0, time.process_time() - C0)
    sys.argv = ["pond", *sys.argv[2:]]
    entry()


if __name__ == "__main__":
    main()
