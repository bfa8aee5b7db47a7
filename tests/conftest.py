"""Shared fixtures: small slices of the real offline corpora, as canonical records."""
from __future__ import annotations

import os

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Area fixtures live beside the tests that own them.
pytest_plugins = [p for p in ("tests.fixtures_teacher", "tests.fixtures_models")
                  if os.path.exists(os.path.join(os.path.dirname(__file__), p.split(".")[1] + ".py"))]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; excluded from `make test` unless POND_SLOW=1")
    config.addinivalue_line("markers", "teacher: needs the real vLLM teacher server")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _sharegpt_records(n: int) -> pl.DataFrame:
    from curation.ingest import records_from_dicts
    from curation.sources import iter_sharegpt

    return records_from_dicts(list(iter_sharegpt(limit=n)), source="sharegpt")


@pytest.fixture(scope="session")
def sharegpt_df() -> pl.DataFrame:
    """The first 400 real ShareGPT conversations as canonical records (malformed ones dropped)."""
    return _sharegpt_records(400)


@pytest.fixture(scope="session")
def fortunes_df() -> pl.DataFrame:
    """Debian fortunes as plain-text records (skips if the apt package is missing)."""
    from curation.records import MESSAGES, make_id
    from curation.sources import FORTUNES_DIR, iter_fortunes

    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian fortunes not installed")
    rows = [(make_id(name, i, t), t, name) for name, i, t in iter_fortunes()]
    return pl.DataFrame(
        {"id": [r[0] for r in rows], "messages": [[] for _ in rows], "text": [r[1] for r in rows],
         "source": [r[2] for r in rows]},
        schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8},
    )


@pytest.fixture(autouse=True)
def _own_pace_file(tmp_path_factory, monkeypatch):
    """Each test plans at the cost classes' own figures: a pace learned by another test's run (pond/pace.py, kept
    across runs on purpose) must not move this one's estimates. Subprocesses inherit it."""
    monkeypatch.setenv("POND_PACE_FILE", str(tmp_path_factory.mktemp("pace") / "pace.json"))
