"""Property: whatever a file holds, ingest and the row-wise steps raise nothing but a one-line
IngestError naming the file, conserve rows (in = kept + rejected) at every step, and give every
rejection a reason. A bounded number of examples in `make test`, many more in the slow test."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings

from curation.exact_dedup import ExactDedupOptions, exact_dedup
from curation.heuristics import HeuristicsOptions, heuristics
from curation.ingest import IngestError, read_records
from curation.minhash import MinhashDedupOptions, minhash_dedup
from curation.pii import PiiOptions, pii
from curation.step import StepContext
from tests.fuzz_rows import FILE_LINES

STEPS = [(heuristics, HeuristicsOptions()), (pii, PiiOptions(action="redact")), (exact_dedup, ExactDedupOptions()),
         (minhash_dedup, MinhashDedupOptions(num_perm=16))]


def check_file(tmp: Path, lines: list[bytes]) -> None:
    path = tmp / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        kept, rejected = read_records(path)
    except IngestError as exc:  # a whole file pond will not read (another encoding, no rows): one line naming it
        assert "fuzz.jsonl" in str(exc) and "\n" not in str(exc)
        return
    rows = sum(1 for line in lines if line.strip(b" \t\r\n\x0b\x0c\xef\xbb\xbf"))
    assert kept.height + rejected.height <= rows  # blank lines are layout; lines of whitespace JSON-decode as blank
    assert kept.height + rejected.height >= rows - sum(1 for line in lines if not line.decode("utf-8", "replace").strip())
    check_rejections(rejected)
    kept.write_parquet(tmp / "kept.parquet")  # what broke runs: text UTF-8 cannot hold
    rejected.write_parquet(tmp / "rejected.parquet")
    frame = kept
    for step, options in STEPS:
        if frame.height == 0:
            break
        out, gone = step(frame, options, StepContext(cache_dir=tmp / "cache", run_dir=tmp, step_dir=tmp))
        assert out.height + gone.height == frame.height, step.__name__
        check_rejections(gone)
        out.write_parquet(tmp / "step.parquet")
        frame = out


def check_rejections(rejected: pl.DataFrame) -> None:
    if rejected.height:
        assert rejected["reason"].null_count() == 0 and (rejected["reason"].str.len_chars() > 0).all()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(lines=FILE_LINES)
def test_no_row_crashes_ingest_or_the_rowwise_steps(tmp_path, lines):
    check_file(tmp_path, lines)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(lines=FILE_LINES)
def test_no_row_crashes_many_examples(tmp_path, lines):
    check_file(tmp_path, lines)
