"""Ingest: files in common formats and layouts -> canonical records + rejections.

Formats: JSONL, JSON (array of objects), Parquet, CSV, Arrow; `auto` picks by file extension, and
`hf` (or `auto` on such a folder) reads Hugging Face `datasets` folders (curation.hf_folders).
Any of them may be compressed (gzip, zstd, bzip2, xz), and text is UTF-8 with or without a
byte-order mark (curation.input_stream); every row passes the Unicode rule (curation.row_checks).
Layouts: see curation.layouts (OpenAI messages, ShareGPT, Alpaca, prompt/response, text); a
column map (`columns`) names the file's own keys for a layout's parts.

Files are read as streams in batches (JSONL line by line, JSON arrays element by element,
Parquet by row group, CSV in chunks), so memory is bounded by the batch size, not the file.
A malformed row becomes a rejection (`stage=ingest`, `reason`, `detail`, `line`); a file that
cannot be read at all raises `IngestError` with a one-line message naming the file.
"""
from __future__ import annotations

import glob
import os
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curation import hf_folders, input_stream
from curation.errors import InputError
from curation.input_stream import UTF8_BOM, EncodingProblem
from curation.layouts import LAYOUTS, MAPPABLE, RowError, mapped_keys_present, normalise
from curation.records import MESSAGES, make_id
from curation.row_checks import check_row, safe_text
from curation.step import StepOptions

FORMATS = ("jsonl", "json", "parquet", "csv", "arrow", "hf")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv",
              ".arrow": "arrow"}
RAW_PREVIEW = 2000  # characters of a bad row kept in rejected.parquet for the audit
BATCH_ROWS = 50_000


class IngestError(InputError):
    """A file (not a row) is unusable: the message is one line naming the file."""


class InputOptions(StepOptions):
    path: str | list[str] = Field(description="file, directory or glob (or a list of them)")
    format: Literal["auto", "jsonl", "json", "parquet", "csv", "arrow", "hf"] = Field(
        "auto", description="file format; `auto` picks by extension (.jsonl/.ndjson, .json, .parquet, .csv, "
                            ".arrow) and reads a `datasets` folder (save_to_disk) as `hf`; `hf`: a `datasets` "
                            "folder or a local Hub cache folder (its Parquet/Arrow files)")
    layout: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_response", "text"] = Field(
        "auto", description="row layout; `auto` detects it per row from the keys present")
    columns: dict[str, str] | None = Field(
        None, description="the file's own keys for a layout's parts, pond's name -> the file's key, e.g. "
                          "`{prompt: question, response: answer}` or `{messages: dialog, role: speaker, "
                          "content: text}` (role/content: keys inside each turn). Names: " + ", ".join(MAPPABLE)
                          + ". A row without a mapped key is rejected (`missing_column`); a map naming a key no "
                            "row of a file has is an error")
    limit: int | None = Field(None, ge=1, description="read at most this many rows in total (for trials)")

    @field_validator("columns")
    @classmethod
    def _known_names(cls, columns: dict[str, str] | None) -> dict[str, str] | None:
        if columns is None:
            return None
        unknown = sorted(set(columns) - set(MAPPABLE))
        if unknown:
            raise ValueError(f"unknown name(s) {', '.join(map(repr, unknown))}; a column map's names are "
                             f"{', '.join(MAPPABLE)}")
        empty = sorted(k for k, v in columns.items() if not v.strip())
        if empty:
            raise ValueError(f"empty file key for {', '.join(map(repr, empty))}")
        keys = list(columns.values())
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"file key(s) {', '.join(map(repr, twice))} mapped to more than one name")
        return columns


def _folder_files(folder: Path, fmt: str) -> list[Path]:
    """The input files of a folder: a `datasets` folder's data files in its own order, a Hub cache
    repository's current snapshot, else every file with a known extension (the metadata files of a
    `datasets` cache left out)."""
    try:
        saved = hf_folders.saved_dataset_files(folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise IngestError(f"{folder}: a `datasets` folder whose state.json or dataset_dict.json cannot be read "
                          f"({type(exc).__name__}: {exc})") from None
    if saved is not None:
        return saved
    folder = hf_folders.hub_snapshot(folder) or folder
    files = sorted(q for q in folder.rglob("*") if q.is_file() and input_stream.format_suffix(q) in EXTENSIONS
                   and not hf_folders.is_metadata(q))
    if fmt == "hf":
        files = [q for q in files if q.suffix.lower() in hf_folders.DATA_SUFFIXES]
        if not files:
            raise IngestError(f"{folder}: format hf expects a `datasets` folder (save_to_disk) or a Hub cache "
                              f"folder holding .arrow/.parquet files; found none")
    return files


def expand_paths(patterns: str | list[str], base_dir: Path = Path("."), fmt: str = "auto") -> list[Path]:
    """Files named by paths, directories and globs, sorted, without duplicates."""
    out: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        p = Path(pattern).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if p.is_dir():
            matches = _folder_files(p, fmt)
        elif any(ch in str(p) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        elif p.is_file():
            matches = [p]
        else:
            raise IngestError(f"{p}: no such file or directory")
        if not matches:
            raise IngestError(f"{p}: matches no input files")
        out.extend(m for m in matches if m not in out)
    return out


def source_names(files: list[Path], base_dir: Path = Path(".")) -> list[str]:
    """The `source` of each input file, which also keys row ids: relative to the recipe's folder when
    every file lies inside it, else relative to the files' common folder. Never an absolute path, so the
    same data gives the same ids (and the same held-out draw) wherever it sits on disk."""
    if all(p.is_relative_to(base_dir) for p in files):
        return [str(p.relative_to(base_dir)) for p in files]
    root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else base_dir
    return [str(p.relative_to(root)) for p in files]


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt == "hf":
        found = EXTENSIONS.get(path.suffix.lower())
        if path.suffix.lower() not in hf_folders.DATA_SUFFIXES:
            raise IngestError(f"{path}: format hf reads .arrow and .parquet files, not {path.suffix or '(no extension)'!r}")
        return found
    if fmt != "auto":
        return fmt
    suffix = input_stream.format_suffix(path)
    found = EXTENSIONS.get(suffix)
    if found is None:
        compressed = f" under {input_stream.compression(path)} compression" if input_stream.compression(path) else ""
        raise IngestError(f"{path}: unknown format {suffix or '(no extension)'!r}{compressed}; "
                          f"expected one of {', '.join(EXTENSIONS)} (optionally with "
                          f"{', '.join(input_stream.COMPRESSIONS)}) or set `format:`")
    return found


def splittable(path: Path, fmt: str = "auto") -> bool:
    """Whether parts of the file can be read by several workers: JSONL by byte ranges and Parquet by
    row groups, and only uncompressed (a compressed stream has no random access)."""
    return file_format(path, fmt) in SPLITTABLE and input_stream.compression(path) is None


# --- readers: each yields (line number, row dict | RowError, raw text) --------------------------

Item = tuple[int, Any, str]
# Part of a file, so that one big file can be read by several workers (the ray executor):
# JSONL: (first byte, end byte, line number of the first byte), the range starting at a line;
# Parquet: (first row group, end row group, row number of the first row). Other formats: whole.
FilePart = tuple[int, int, int]
SPLITTABLE = ("jsonl", "parquet")
TEXT_FORMATS = ("jsonl", "json", "csv")


def _read_jsonl(path: Path, part: FilePart | None = None) -> Iterator[Item]:
    start, end, first = part or (0, None, 1)
    with input_stream.open_bytes(path) as f:
        if start:
            f.seek(start)  # parts exist only for uncompressed files (`splittable`)
        for line_no, raw in enumerate(f, start=first):
            if end is not None:
                if start >= end:
                    break
                start += len(raw)
            if line_no == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, RowError("invalid_utf8", f"byte 0x{raw[exc.start]:02X} at byte {exc.start} is not "
                                                        f"UTF-8 ({exc.reason})"), raw.decode("utf-8", "replace")
                continue
            if not line.strip():
                continue  # blank lines are layout, not rows
            yield line_no, _parse_json(line), line


def _parse_json(text: str) -> Any:
    """A JSON value, or the RowError saying why the text is not one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError("bad_json", exc.msg + f" at column {exc.colno}")
    except RecursionError:
        return RowError("too_deep", "JSON nested too deep to read")


def _read_json_array(path: Path, part: None = None) -> Iterator[Item]:
    with input_stream.open_bytes(path) as f:
        data = f.read()
    try:
        body = data.removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    decoder = json.JSONDecoder()
    pos = len(body) - len(body.lstrip())
    if not body.startswith("[", pos):
        raise IngestError(f"{path}: a .json input must be an array of objects (use .jsonl for one object per line)")
    pos += 1
    line_no = body.count("\n", 0, pos) + 1
    last = pos
    while True:
        while pos < len(body) and body[pos] in " \r\n\t,":
            pos += 1
        if pos >= len(body):
            raise IngestError(f"{path}:{body.count(chr(10), 0, pos) + 1}: JSON array is not closed (file cut off?)")
        if body[pos] == "]":
            return
        line_no += body.count("\n", last, pos)
        try:
            value, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            raise IngestError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise IngestError(f"{path}:{line_no}: JSON nested too deep to read") from None
        yield line_no, value, body[pos:end]
        last, pos = pos, end


def _read_parquet(path: Path, part: FilePart | None = None) -> Iterator[Item]:
    import pyarrow.parquet as pq

    with input_stream.local_copy(path) as plain:
        try:
            pf = pq.ParquetFile(plain)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
            raise IngestError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        first_group, end_group, first_row = part or (0, pf.num_row_groups, 1)
        row = first_row - 1
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=range(first_group, end_group)):
            for record in batch.to_pylist():
                row += 1
                yield row, record, ""


def _read_csv(path: Path, part: None = None) -> Iterator[Item]:
    with input_stream.local_copy(path) as plain:
        yield from _read_plain_csv(path, plain)


def _read_plain_csv(path: Path, plain: Path) -> Iterator[Item]:
    lazy = pl.scan_csv(plain, infer_schema=False, encoding="utf8-lossy")
    row = 1  # the header is line 1
    try:
        for batch in lazy.collect_batches(chunk_size=BATCH_ROWS):
            for record in batch.to_dicts():
                row += 1
                cleaned = {k: v for k, v in record.items() if not (k == "" or k.startswith("__UNNAMED"))}
                if any(isinstance(v, str) and "\ufffd" in v for v in cleaned.values()):
                    yield row, RowError("invalid_utf8", "row holds bytes that are not UTF-8"), json.dumps(cleaned)
                    continue
                # CSV has no null vs empty distinction: empty cells of optional fields are absent.
                yield row, {k: v for k, v in cleaned.items() if v not in (None, "")}, ""
    except pl.exceptions.PolarsError as exc:
        raise IngestError(f"{path}: CSV parse error after line {row} ({str(exc).splitlines()[0]})") from None


def _read_arrow(path: Path, part: None = None) -> Iterator[Item]:
    """An Arrow IPC file: the stream format `datasets` writes, or the random-access (Feather v2) one."""
    try:
        with input_stream.local_copy(path) as plain:
            batches = list(hf_folders.arrow_batches(plain))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise IngestError(f"{path}: not a readable Arrow file ({type(exc).__name__}: {exc})") from None
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            yield row, record, ""


READERS = {"jsonl": _read_jsonl, "json": _read_json_array, "parquet": _read_parquet, "csv": _read_csv,
           "arrow": _read_arrow}


# --- records -------------------------------------------------------------------------------------

def _records_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    base = {"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8}
    if not rows:
        return pl.DataFrame(schema=base)
    core = pl.DataFrame([messages_column([r["messages"] for r in rows]) if k == "messages" else
                         pl.Series(k, [r[k] for r in rows], dtype=dtype) for k, dtype in base.items()])
    extra_keys = sorted({k for r in rows for k in r} - set(base))
    if not extra_keys:
        return core
    extras = pl.DataFrame([_user_column(k, [r.get(k) for r in rows]) for k in extra_keys])
    return pl.concat([core, extras], how="horizontal")


def messages_column(values: list[list[dict[str, str]]]) -> pl.Series:
    """The `messages` column of normalised rows, built from one flat role and one flat content column and
    the list offsets: polars reads nested Python objects a struct at a time, 3x slower."""
    import pyarrow as pa

    turns = pl.DataFrame({"role": [t["role"] for msgs in values for t in msgs],
                          "content": [t["content"] for msgs in values for t in msgs]},
                         schema={"role": pl.Utf8, "content": pl.Utf8}).to_struct("messages")
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([len(msgs) for msgs in values], out=offsets[1:])
    # offsets through polars, not pa.array (pyarrow imports pandas to convert numpy: 0.4 s); the turns as
    # arrow string views, polars' own layout (not copied out to large strings and back in); the list back as
    # a table, not pl.Series(array) (that imports pyarrow.compute: 0.15 s)
    column = pa.LargeListArray.from_arrays(pl.Series(offsets).to_arrow(),
                                           turns.to_arrow(compat_level=pl.CompatLevel.newest()))
    return pl.DataFrame(pa.table({"messages": column})).to_series()


def _user_column(name: str, values: list[Any]) -> pl.Series:
    """A user's own column, in its own type where polars holds every value as it is; otherwise (mixed
    kinds, structs whose rows have different keys, ...) each value as JSON text, so nothing is lost or
    silently cast."""
    try:
        series = pl.Series(name, values, strict=False)
        if series.to_list() == values and _parquet_writable(series.dtype):
            return series
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
        pass
    return as_json_text(name, values)


def as_json_text(name: str, values: list[Any]) -> pl.Series:
    return pl.Series(name, [None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in values],
                     dtype=pl.Utf8)


def _parquet_writable(dtype: pl.DataType) -> bool:
    """Parquet cannot write a struct without fields, nor polars' Object (values of mixed kinds)."""
    if isinstance(dtype, pl.Struct):
        return bool(dtype.fields) and all(_parquet_writable(f.dtype) for f in dtype.fields)
    if isinstance(dtype, (pl.List, pl.Array)):
        return _parquet_writable(dtype.inner)
    return dtype != pl.Object


def mixed_user_columns(schemas: list[Mapping[str, pl.DataType]]) -> list[str]:
    """User columns typed differently in different batches (an integer here, an object there), where
    polars' relaxed concatenation would fail or cast values away (it turns 0 into {"k": 0} beside a
    struct); numbers of different widths are not mixed: they widen without loss."""
    types: dict[str, set] = {}
    for schema in schemas:
        for name, dtype in schema.items():
            if dtype != pl.Null:
                types.setdefault(name, set()).add(dtype)
    return [c for c, ts in types.items()
            if len(ts) > 1 and c not in _REJECT_SCHEMA and not all(t.is_numeric() for t in ts)]


def as_json_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`frame` with `columns` (those it has) as JSON text, so batches concatenate without a cast."""
    if not any(c in frame.columns for c in columns):
        return frame
    return frame.with_columns(as_json_text(c, frame[c].to_list()) for c in columns if c in frame.columns)


_REJECT_SCHEMA = {"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8, "line": pl.Int64,
                  "stage": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8}


def ingest_kept_schema() -> pl.DataFrame:
    return _records_frame([])


def ingest_rejected_schema() -> pl.DataFrame:
    return pl.DataFrame(schema=_REJECT_SCHEMA)


def _reject_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_REJECT_SCHEMA) if rows else pl.DataFrame(schema=_REJECT_SCHEMA)


def iter_file_batches(path: Path, fmt: str = "auto", layout: str = "auto", source: str | None = None,
                      limit: int | None = None, part: FilePart | None = None,
                      columns: dict[str, str] | None = None) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Stream one file (or one `part` of it) as (kept, rejected) batches of canonical records.

    A part may hold no rows; whether the whole file does, and whether any of its rows has each key
    the column map names, is its caller's check."""
    if layout not in ("auto", *LAYOUTS):
        raise IngestError(f"{path}: unknown layout {layout!r}")
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    source = source or str(path)
    kind = file_format(path, fmt)
    reader = READERS[kind]
    if kind in TEXT_FORMATS and (part is None or part[0] == 0):
        try:
            input_stream.check_encoding(path)
        except EncodingProblem as exc:
            raise IngestError(f"{path}: {exc}") from None
        except input_stream.decompression_errors() as exc:
            raise IngestError(f"{path}: cannot be read as {input_stream.compression(path) or 'a file'} "
                              f"({type(exc).__name__}: {exc})") from None
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen = line_no = 0
    unseen_keys = set(columns.values()) if columns else set()
    try:
        for line_no, item, raw in reader(path, part):
            if limit is not None and seen >= limit:
                break
            seen += 1
            if unseen_keys and not isinstance(item, RowError):
                unseen_keys -= mapped_keys_present(item, columns)
            try:
                if isinstance(item, RowError):
                    raise item
                check_row(item, raw)
                messages, text, extras = normalise(item, layout, columns)
            except RowError as err:
                rejected.append(_rejection(path, source, line_no, item, raw, err))
            else:
                kept.append({"id": make_id(source, line_no, text), "messages": messages, "text": text,
                             "source": source, **extras})
            if len(kept) + len(rejected) >= BATCH_ROWS:
                yield _records_frame(kept), _reject_frame(rejected)
                kept, rejected = [], []
    except input_stream.decompression_errors() as exc:
        how = input_stream.compression(path)
        where = f"after line {line_no}" if line_no else "at its start"
        raise IngestError(f"{path}: cannot be read {where}"
                          + (f": its {how} stream is damaged or cut off" if how else "")
                          + f" ({getattr(exc, 'strerror', None) or exc})") from None
    if seen == 0 and part is None:
        raise IngestError(f"{path}: holds no rows")
    if unseen_keys and part is None:
        names = {v: k for k, v in columns.items()}
        read = f" (of the first {seen} rows: input.limit)" if limit is not None and seen >= limit else ""
        raise IngestError(f"{path}: input.columns names key(s) no row has{read}: "
                          + ", ".join(f"{k!r} (for {names[k]})" for k in sorted(unseen_keys)))
    if kept or rejected:
        yield _records_frame(kept), _reject_frame(rejected)


def _rejection(path: Path, source: str, line_no: int, item: Any, raw: str, err: RowError) -> dict[str, Any]:
    """A rejected row: its raw text (cut to RAW_PREVIEW, escaped where UTF-8 cannot hold it), where it
    was, and why."""
    if raw:
        preview = raw[:RAW_PREVIEW]
    else:
        try:
            preview = json.dumps(item, default=str, ensure_ascii=False)[:RAW_PREVIEW]
        except (ValueError, RecursionError):  # a structure json cannot write (too deep)
            preview = f"({type(item).__name__} too deep to show)"
    preview = safe_text(preview)
    return {"id": make_id(source, line_no, preview), "messages": [], "text": preview, "source": source,
            "line": line_no, "stage": "ingest", "reason": err.reason,
            "detail": safe_text(f"{path.name}:{line_no}: {err.detail or err.reason}")}


def iter_batches(opts: InputOptions, base_dir: Path = Path(".")) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Stream every input file of `opts` as (kept, rejected) batches."""
    remaining = opts.limit
    files = expand_paths(opts.path, base_dir, opts.format)
    for path, source in zip(files, source_names(files, base_dir)):
        for kept, rejected in iter_file_batches(path, opts.format, opts.layout, source, remaining,
                                                columns=opts.columns):
            if remaining is not None:
                remaining -= len(kept) + len(rejected)
            yield kept, rejected
        if remaining is not None and remaining <= 0:
            return


def concat_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate batches whose user columns may differ (missing columns become null)."""
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame()
    mixed = mixed_user_columns([f.schema for f in frames])
    return pl.concat([as_json_columns(f, mixed) for f in frames], how="diagonal_relaxed")


def read_records(path: str | Path | list[str], fmt: str = "auto", layout: str = "auto",
                 base_dir: Path = Path("."), columns: dict[str, str] | None = None
                 ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read whole input(s) into memory: (records, rejected). For small files: eval sets, gold sets."""
    opts = InputOptions(path=[str(p) for p in path] if isinstance(path, list) else str(path), format=fmt,
                        layout=layout, columns=columns)
    kept, rejected = [], []
    for k, r in iter_batches(opts, base_dir):
        kept.append(k)
        rejected.append(r)
    return concat_frames(kept), concat_frames(rejected)


def records_from_dicts(rows: list[dict[str, Any]], source: str = "memory", layout: str = "auto") -> pl.DataFrame:
    """Canonical records from in-memory dicts; malformed rows are dropped (tests, scripts)."""
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            messages, text, extras = normalise(row, layout)
        except RowError:
            continue
        out.append({"id": make_id(source, i, text), "messages": messages, "text": text, "source": source, **extras})
    return _records_frame(out)
