"""The local executor's streaming (pond.executors.local): the same rows, reasons, verdicts and figures
with tiny batches as with the whole input at once, dedups, the held-out draw and decontamination included
(dedups with reference rows and with MinHash's verification texts spilled to disk)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curation.scaled_corpus import write_corpus
from pond.executors.shards import read_output
from pond.recipe import parse_recipe
from pond.runner import Runner

STEPS = ("  - holdout: {n: 30}\n  - exact_dedup: {}\n  - heuristics: {}\n  - answer_faults: {}\n"
         "  - pii: {action: redact}\n"
         "  - minhash_dedup: {threshold: 0.7, keep: longest}\n  - minhash_dedup: {threshold: 0.5, ngram: 3}\n"
         "  - exact_dedup: {lowercase: false}\n  - holdout: {n: 20}\n"
         "  - decontaminate: {against: 'run:heldout.parquet', ngram: 8, max_row_frequency: 3}\n")
# figures that are timings, not results
TIMES = {"seconds", "signature_seconds", "candidate_seconds", "verify_seconds", "cluster_seconds", "outputs"}


def curate(tmp_path: Path, name: str, batch: int, monkeypatch, steps: str = STEPS) -> Path:
    monkeypatch.setenv("POND_LOCAL_BATCH_ROWS", str(batch))
    recipe = parse_recipe(f"name: s\ninput: {{path: data/*.jsonl}}\nseed: 3\nsteps:\n{steps}")
    runner = Runner(recipe, tmp_path / name, tmp_path, cache_dir=tmp_path / "cache")
    runner.curate()
    return runner.out


def assert_same_runs(whole: Path, streamed: Path, ignore: frozenset = frozenset()) -> None:
    steps = sorted(p.name for p in (whole / "steps").iterdir())
    assert steps == sorted(p.name for p in (streamed / "steps").iterdir())
    for name in steps:
        a, b = whole / "steps" / name, streamed / "steps" / name
        for out in ("kept.parquet", "rejected.parquet"):
            fa, fb = read_output(a / out), read_output(b / out)
            assert fa.equals(fb), (name, out)
        sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
        skip = TIMES | ignore
        assert {k: v for k, v in sa.items() if k not in skip} == {k: v for k, v in sb.items() if k not in skip}, name
    assert pl.read_parquet(whole / "curated.parquet").equals(pl.read_parquet(streamed / "curated.parquet"))
    if (whole / "heldout.parquet").exists():  # the held-out draw, streamed or not
        assert pl.read_parquet(whole / "heldout.parquet").equals(pl.read_parquet(streamed / "heldout.parquet"))


def test_tiny_batches_give_the_whole_inputs_results(tmp_path, monkeypatch):
    write_corpus(tmp_path / "data", 1500, files=2, base_limit=900)
    whole = curate(tmp_path, "whole", 0, monkeypatch)
    streamed = curate(tmp_path, "streamed", 97, monkeypatch)
    assert_same_runs(whole, streamed)
    ledger = [json.loads(line) for line in (streamed / "ledger.jsonl").read_text().splitlines()]
    assert any(e.get("batch_rows") == 97 for e in ledger)  # it did stream
    mh = json.loads((streamed / "steps" / "06-minhash_dedup" / "stats.json").read_text())
    assert mh["duplicates"] > 50 and mh["clusters"] > 10
    dc = json.loads((streamed / "steps" / "10-decontaminate" / "stats.json").read_text())
    assert dc["contaminated"] > 0  # decontamination found rows to drop, streamed as whole
    assert not any(p.name.startswith("_") for d in (streamed / "steps").iterdir() for p in d.iterdir())


def test_minhash_spills_verification_texts_with_the_same_results(tmp_path, monkeypatch):
    import curation.minhash_stream as ms

    write_corpus(tmp_path / "data", 1200, files=1, base_limit=700)
    steps = "  - minhash_dedup: {threshold: 0.7, verify_batch_docs: 50}\n"
    whole = curate(tmp_path, "whole", 0, monkeypatch, steps)
    monkeypatch.setattr(ms, "SPILL_CHARS", 200_000)
    streamed = curate(tmp_path, "streamed", 250, monkeypatch, steps)
    stats = json.loads((streamed / "steps" / "01-minhash_dedup" / "stats.json").read_text())
    assert stats["verify_spill_groups"] > 3
    assert_same_runs(whole, streamed, frozenset({"verify_spill_groups"}))


def test_minhash_spills_its_pairs_with_the_same_results(tmp_path, monkeypatch):
    """Candidate and verified pairs in files (a few hundred pairs held at once, runs indexed every 16 keys):
    the same kept and rejected rows, figures and pairs.parquet as all of them in memory, and nothing left."""
    import curation.minhash_pairs as mp

    write_corpus(tmp_path / "data", 1200, files=1, base_limit=300)
    steps = "  - minhash_dedup: {threshold: 0.7, verify_batch_docs: 50}\n"
    whole = curate(tmp_path, "whole", 0, monkeypatch, steps)
    monkeypatch.setattr(mp, "PAIRS_HELD", 300)
    monkeypatch.setattr(mp, "STRIDE", 16)
    streamed = curate(tmp_path, "streamed", 250, monkeypatch, steps)
    step = "01-minhash_dedup"
    stats = json.loads((streamed / "steps" / step / "stats.json").read_text())
    assert stats["candidate_pairs"] > 5 * 300 and stats["pairs_spilled_files"] > 3
    assert_same_runs(whole, streamed, frozenset({"pairs_spilled_files"}))
    assert pl.read_parquet(whole / "steps" / step / "pairs.parquet").equals(
        pl.read_parquet(streamed / "steps" / step / "pairs.parquet"))
    assert not any(p.name.startswith("_") for p in (streamed / "steps" / step).iterdir())


@pytest.mark.parametrize("kind", ["exact_dedup", "minhash_dedup"])
def test_streamed_dedup_against_reference_rows(tmp_path, monkeypatch, kind):
    """`pond update`'s case: reference rows lead and are never output; the same kept ids, verdicts
    and against_reference figures as the in-memory step."""
    from curation import store
    from curation.step import StepContext
    from pond.executors import local
    from pond.steps import STEPS as TABLE
    from tests.test_ray_executor import _steps_with_reference

    pond, new, steps = _steps_with_reference(tmp_path)
    opts = dict(steps)[kind]
    prev = tmp_path / "prev.parquet"
    store.write_parquet(new, prev)
    spec = TABLE[kind]
    whole = StepContext(cache_dir=tmp_path / "cache", reference=pond)
    kept, rejected = spec.load()[1](new, opts, whole)
    monkeypatch.setenv("POND_LOCAL_BATCH_ROWS", "40")
    step_dir = tmp_path / kind
    step_dir.mkdir()
    ctx = StepContext(cache_dir=tmp_path / "cache", reference=pond, step_dir=step_dir)
    n = local.run_marked(spec.streamed_form(), opts, prev, ctx, step_dir / "k.parquet",
                         step_dir / "r.parquet")
    assert n == (len(new), len(kept), len(rejected))
    assert pl.read_parquet(step_dir / "k.parquet").equals(kept)
    assert pl.read_parquet(step_dir / "r.parquet").equals(rejected)
    assert ctx.stats["against_reference"] == whole.stats["against_reference"]
    assert whole.stats["against_reference"]["duplicates_of_reference_rows"] >= 1


ARENAS = """
import ctypes, sys, tempfile, threading
import numpy as np, polars  # noqa: F401  (a run has its libraries' threads before it limits arenas)

libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]


def arenas() -> int:
    with tempfile.NamedTemporaryFile(suffix=".xml") as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        return open(f.name).read().count("<heap nr=")


from pond.executors.local import limit_malloc_arenas

before = arenas()
if sys.argv[1] == "limit":
    limit_malloc_arenas()
gate = threading.Barrier(16)


def work():
    held = [np.ones(1000) for _ in range(50)]  # each thread mallocs while all are alive
    gate.wait()
    del held


threads = [threading.Thread(target=work) for _ in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(before, arenas())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc arenas")
def test_a_run_stops_threads_making_new_malloc_arenas(tmp_path):
    """After `limit_malloc_arenas` (what `Runner.curate` calls first) sixteen live threads get no arena the
    process did not have; without it they get new ones (so the check can fail)."""
    script = tmp_path / "arenas.py"
    script.write_text(ARENAS)
    counts = {}
    for arm in ("limit", "none"):
        out = subprocess.run([sys.executable, str(script), arm], capture_output=True, text=True, check=True)
        counts[arm] = tuple(int(x) for x in out.stdout.split())
    assert counts["limit"][1] <= max(counts["limit"][0], 2)
    assert counts["none"][1] > counts["none"][0]
