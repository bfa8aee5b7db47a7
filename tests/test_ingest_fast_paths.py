"""Ingest's fast paths give what the plain ones gave: the raw-line pre-check of the Unicode rule, and the
`messages` column built from flat columns and offsets."""
from __future__ import annotations

import io
import re

import polars as pl
import pytest

from curation.ingest import messages_column
from curation.records import MESSAGES
from curation.row_checks import _raw_clean

# the pre-check as it was first written: one regex over the text
_PLAIN = re.compile(r"\\u(?:00[01]|d[89a-f])|[\x00-\x08\x0e-\x1f]", re.IGNORECASE)

RAW = ["", "{}", '{"a": "b"}', r'{"a": "\u0000"}', r'{"a": "\U001f"}', r'{"a": "\uD83D\uDE00"}', r'{"a": "\udfff"}',
       r'{"a": "\u00ff"}', r'{"a": "\u0020 \u2028"}', '{"a": "\x01"}', '{"a": "é\x1f"}', '{"a": "\x7f\x0b\x0c\t\r\n"}',
       '{"a": "naïve 日本語 🙂"}', r'{"a": "\\u0000"}', r'{"a": "\u00"}', r'{"a": "\ud"}', "é\x08",
       "[" * 63 + "]" * 63, "[" * 64 + "]" * 64, "{" * 40 + "[" * 24]


@pytest.mark.parametrize("raw", RAW)
def test_raw_precheck_equals_the_one_regex(raw):
    plain = raw.count("[") + raw.count("{") < 64 and _PLAIN.search(raw) is None
    assert _raw_clean(raw) == plain


def test_raw_precheck_on_every_code_point_below_0x3000():
    for code in range(0x3000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        raw = f'{{"a": "x{chr(code)}y"}}'
        assert _raw_clean(raw) == (_PLAIN.search(raw) is None), hex(code)


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    return buf.getvalue()


@pytest.mark.parametrize("values", [
    [],
    [[]],
    [[], []],
    [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "héllo 🙂"}], [],
     [{"role": "system", "content": ""}, {"role": "user", "content": "x" * 5000}]],
])
def test_messages_column_equals_the_python_object_path(values):
    fast, plain = messages_column(values), pl.Series("messages", values, dtype=MESSAGES)
    assert fast.dtype == MESSAGES
    assert fast.to_list() == plain.to_list()
    assert _parquet(fast.to_frame()) == _parquet(plain.to_frame())


def test_messages_column_imports_neither_pandas_nor_pyarrow_compute():
    """pa.array(numpy) imports pandas and pl.Series(arrow array) pyarrow.compute: 0.5 s of every ingest."""
    import subprocess
    import sys

    code = ("import sys; from curation.ingest import messages_column; "
            "messages_column([[{'role': 'user', 'content': 'hi'}], []]); "
            "print(sorted(m for m in ('pandas', 'pyarrow.compute') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
