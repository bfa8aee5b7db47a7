"""An input file's bytes as they come: compressed or not, with or without a byte-order mark.

- Compression (gzip, zstd, bzip2, xz) is known by the file's last extension or, failing that, by
  its magic bytes; the decompressed bytes are read as a stream, never inflated in memory at once.
  The format is then the extension under the compression one (`rows.jsonl.zst` is JSONL).
- Text formats are UTF-8. A UTF-8 byte-order mark is dropped; CRLF line ends are whitespace to
  JSON and to the CSV reader. A file in another encoding is one `EncodingProblem` naming the
  encoding found (UTF-16/32 by their byte-order mark or their NUL bytes, Latin-1 when several
  lines of its first 64 KiB are not UTF-8 and no byte there is), never read as mojibake. A line that
  is not UTF-8 in a UTF-8 file is that row's rejection (`invalid_utf8`).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from curation.errors import InputError

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bzip2", ".xz": "xz"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
UTF8_BOM = b"\xef\xbb\xbf"
_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"), (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
         (b"\xfe\xff", "UTF-16 (big-endian)"), (b"\xff\xfe", "UTF-16 (little-endian)"))
SNIFF_BYTES = 1 << 16  # what the encoding is judged on: the first 64 KiB of (decompressed) text
LATIN1_LINES = 3  # fewer broken lines than this are broken rows (each rejected), not a Latin-1 file


class EncodingProblem(InputError):
    """The file's text is not UTF-8; the message names the encoding found and what to do."""


def decompression_errors() -> tuple[type[BaseException], ...]:
    """What a damaged compressed stream raises while it is read (gzip's are OSError and EOFError)."""
    import zstandard

    return (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def compression(path: Path) -> str | None:
    """The file's compression: by its last extension, else by its first bytes; None if plain."""
    by_name = COMPRESSIONS.get(path.suffix.lower())
    if by_name:
        return by_name
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def format_suffix(path: Path) -> str:
    """The extension that names the format: `.jsonl` for `rows.jsonl.gz` as for `rows.jsonl`."""
    if path.suffix.lower() in COMPRESSIONS:
        return Path(path.stem).suffix.lower()
    return path.suffix.lower()


def _open_zstd(path: Path) -> BinaryIO:
    import zstandard

    raw = open(path, "rb")  # noqa: SIM115 - closed with the reader (closefd)
    reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True, read_across_frames=True)
    return io.BufferedReader(reader, buffer_size=1 << 20)


_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open, "zstd": _open_zstd}


def open_bytes(path: Path) -> BinaryIO:
    """The file's (decompressed) bytes as a binary stream; seekable only when it is not compressed."""
    kind = compression(path)
    return _OPENERS[kind](path) if kind else open(path, "rb")  # noqa: SIM115 - the caller closes it


@contextlib.contextmanager
def local_copy(path: Path) -> Iterator[Path]:
    """A plain file with the (decompressed) content, for readers that need to seek (Parquet, Arrow, CSV):
    the path itself when not compressed, else a temporary file on disk, streamed, removed after."""
    if compression(path) is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pond-inflate-") as tmp:
        plain = Path(tmp) / path.stem
        with open_bytes(path) as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield plain


def encoding_problem(head: bytes) -> str | None:
    """Why the text starting with `head` is not UTF-8 (the encoding found and what to do), or None."""
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM):]
    for bom, name in _BOMS:
        if head.startswith(bom):
            return f"is {name} (byte-order mark {bom.hex(' ').upper()}), not UTF-8; convert it, e.g. " \
                   f"`iconv -f {name.split()[0]} -t UTF-8`"
    sample = head[:4096]
    if sample and sample.count(0) * 4 >= len(sample):  # ASCII text in UTF-16/32: every other byte is NUL
        return "holds NUL bytes between its characters: UTF-16 or UTF-32 without a byte-order mark, not UTF-8; " \
               "convert it, e.g. `iconv -f UTF-16 -t UTF-8`"
    try:
        head.decode("utf-8")
        return None
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return None  # a character cut by the sniff's own limit
        bad = exc.start
    bad_lines = sum(1 for line in head.split(b"\n")[:-1] if not _is_utf8(line))
    if bad_lines >= LATIN1_LINES and _never_utf8(head):
        line = head.count(b"\n", 0, bad) + 1
        return f"is not UTF-8: {bad_lines} lines of the first {len(head) // 1024 or 1} KiB are not (the first: " \
               f"byte 0x{head[bad]:02X} on line {line}) and none of its non-ASCII bytes is; it looks like Latin-1 " \
               f"(Windows-1252): convert it, e.g. `iconv -f WINDOWS-1252 -t UTF-8`"
    return None  # UTF-8 with a few broken rows: those rows are rejected one by one


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _never_utf8(head: bytes) -> bool:
    """True when the non-ASCII bytes of `head` never form a UTF-8 character but read as Windows-1252."""
    try:
        head.decode("cp1252")
    except UnicodeDecodeError:
        return False
    text = head.decode("utf-8", "replace")
    return all(ord(ch) < 128 or ch == "\ufffd" for ch in text)


def check_encoding(path: Path) -> None:
    """Raise EncodingProblem if the (decompressed) text of `path` is not UTF-8."""
    with open_bytes(path) as f:
        head = f.read(SNIFF_BYTES)
    problem = encoding_problem(head)
    if problem:
        raise EncodingProblem(problem)
