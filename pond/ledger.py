"""The run ledger: an append-only `ledger.jsonl` of what happened in a run directory, and when.

stats.json and manifest.json say what a run *is*; the ledger says how it got there (starts,
skips on resume, failures with their error), which is what a user asks after a crash.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

LEDGER = "ledger.jsonl"


def append(run_dir: Path, event: str, **fields: Any) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **fields}
    with open(Path(run_dir) / LEDGER, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def read(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LEDGER
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
