"""Where the rows of a Hugging Face dataset folder are, without importing `datasets`.

- `Dataset.save_to_disk` folder: `state.json` lists its Arrow files (`_data_files`) in order, beside
  `dataset_info.json`; a `DatasetDict` has `dataset_dict.json` naming its splits, one such folder each.
- A local Hub cache repository (`datasets--owner--name/` with `refs/` and `snapshots/`): the snapshot
  `refs/main` names (else the only one), whose Parquet/Arrow files are the data.
- A `datasets` build cache (`owner___name/config/version/hash/`): `*.arrow` beside `dataset_info.json`.

The Arrow files `datasets` writes are in the IPC *stream* format; Feather v2 (IPC file) is read too.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

DATA_SUFFIXES = (".arrow", ".parquet")
METADATA_NAMES = ("dataset_info.json", "state.json", "dataset_dict.json")


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a `save_to_disk` folder (every split of a DatasetDict, in its order), or
    None when `folder` is not one."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        return [f for split in splits for f in saved_dataset_files(folder / split) or []]
    state = folder / "state.json"
    if not state.is_file() or not (folder / "dataset_info.json").is_file():
        return None
    files = json.loads(state.read_text()).get("_data_files", [])
    return [folder / f["filename"] for f in files]


def hub_snapshot(folder: Path) -> Path | None:
    """The current snapshot folder of a Hub cache repository folder, or None when it is not one."""
    snapshots = folder / "snapshots"
    if not (snapshots.is_dir() and (folder / "refs").is_dir()):
        return None
    main = folder / "refs" / "main"
    if main.is_file() and (snapshots / main.read_text().strip()).is_dir():
        return snapshots / main.read_text().strip()
    found = sorted(d for d in snapshots.iterdir() if d.is_dir())
    return found[0] if len(found) == 1 else None


def is_metadata(path: Path) -> bool:
    """A `datasets` metadata file lying beside the data files it describes (not rows to read)."""
    return path.name in METADATA_NAMES and any(q.suffix in DATA_SUFFIXES for q in path.parent.iterdir())


def arrow_batches(path: Path) -> Iterator:
    """Record batches of an Arrow IPC file, stream or file format (memory-mapped)."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        file_reader = pa.ipc.open_file(source)
        for i in range(file_reader.num_record_batches):
            yield file_reader.get_batch(i)
        return
    yield from reader
