"""A noisy corpus of any size from the offline ShareGPT records, for scale tests and benchmarks.

The first pass over the ~17.6k real conversations is kept as it is; every further row is a copy
of one of them — an exact copy (30%), or one with 1 to 30 words of its longest turn replaced
(long turns stay near-duplicates, short ones stop being duplicates). Deterministic per seed.
Rows keep the ShareGPT layout (`conversations` of `from`/`value`), plus a user column `doc_id`.
"""
from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from curation.sources import iter_sharegpt


def scaled_sharegpt(n_rows: int, seed: int = 0, base_limit: int | None = None) -> Iterator[dict]:
    base = [r for r in iter_sharegpt(limit=base_limit) if r.get("conversations")]
    rng = random.Random(seed)
    for i in range(n_rows):
        src = base[i % len(base)]
        conv = [dict(c) for c in src["conversations"]]
        if i >= len(base) and rng.random() >= 0.3:
            j = max(range(len(conv)), key=lambda k: len(str(conv[k].get("value") or "")))
            words = str(conv[j].get("value") or "").split(" ")
            for _ in range(rng.randint(1, 30)):
                words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
            conv[j]["value"] = " ".join(words)
        yield {"doc_id": f"doc-{i}", "conversations": conv}


def _open_text(path: Path, compress: str | None):
    if compress == "gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    if compress == "zst":
        import zstandard

        return zstandard.open(path, "w", cctx=zstandard.ZstdCompressor(level=3), encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def write_corpus(folder: Path, n_rows: int, files: int = 2, seed: int = 0, malformed: bool = True,
                 base_limit: int | None = None, compress: Literal["gz", "zst"] | None = None) -> list[Path]:
    """`files` JSONL files holding `n_rows` rows between them (plus one malformed line each), compressed
    where asked (`part-000.jsonl.zst`: 5M rows are ~32 GB of JSONL, ~6 GB in zstd)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f".jsonl.{compress}" if compress else ".jsonl"
    paths = [folder / f"part-{k:03d}{suffix}" for k in range(files)]
    f, open_index = None, -1
    try:
        for i, row in enumerate(scaled_sharegpt(n_rows, seed, base_limit)):
            if (k := i * files // n_rows) != open_index:  # the rows fill the files in turn: one open at a time
                if f is not None:
                    f.close()
                f, open_index = _open_text(paths[k], compress), k
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            if malformed and i % max(1, n_rows // files) == 7:
                f.write('{"conversations": [oops\n')
    finally:
        if f is not None:
            f.close()
    for path in paths:  # more files than rows: the rest exist, empty
        if not path.exists():
            _open_text(path, compress).close()
    return paths
