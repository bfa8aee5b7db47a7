"""Files as they come: compressed, with a byte-order mark and CRLF, content parts, other encodings,
broken Unicode, and user columns of mixed types. Each either reads right, is a rejection with a
reason, or is one line naming the file; none crashes a run."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import zstandard

from curation.ingest import IngestError, read_records

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(30)]
COMPRESS = {".gz": gzip.compress, ".zst": lambda b: zstandard.ZstdCompressor().compress(b), ".bz2": bz2.compress,
            ".xz": lzma.compress}


def jsonl_bytes(rows: list, end: str = "\n") -> bytes:
    return "".join(json.dumps(r) + end for r in rows).encode()


@pytest.mark.parametrize("ext", list(COMPRESS))
def test_compressed_jsonl_reads_like_plain(tmp_path, ext):
    plain = tmp_path / "rows.jsonl"
    plain.write_bytes(jsonl_bytes(ROWS))
    packed = tmp_path / f"rows.jsonl{ext}"
    packed.write_bytes(COMPRESS[ext](plain.read_bytes()))
    kept, rejected = read_records(packed)
    base, _ = read_records(plain)
    assert kept.height == 30 and rejected.height == 0
    assert kept["text"].to_list() == base["text"].to_list()


def test_compression_found_by_magic_bytes_and_line_numbers_count_decompressed_lines(tmp_path):
    body = jsonl_bytes(ROWS[:3]) + b"{not json\n" + jsonl_bytes(ROWS[3:6])
    path = tmp_path / "shard.jsonl"  # gzip content under a plain name, as some crawlers write it
    path.write_bytes(gzip.compress(body))
    kept, rejected = read_records(path)
    assert kept.height == 6
    assert rejected["line"].to_list() == [4] and rejected["reason"].to_list() == ["bad_json"]
    assert rejected["detail"][0].startswith("shard.jsonl:4:")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_other_formats_compressed(tmp_path, fmt):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(12)]
    plain = tmp_path / f"rows.{fmt}"
    if fmt == "parquet":
        pl.DataFrame(rows).write_parquet(plain)
    elif fmt == "csv":
        pl.DataFrame(rows).write_csv(plain)
    else:
        plain.write_text(json.dumps(rows))
    packed = tmp_path / f"packed.{fmt}.zst"
    packed.write_bytes(COMPRESS[".zst"](plain.read_bytes()))
    kept, rejected = read_records(packed)
    assert kept.height == 12 and rejected.height == 0
    assert kept["text"].to_list() == read_records(plain)[0]["text"].to_list()


def test_damaged_compressed_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl_bytes(ROWS * 20))[:-200])  # cut off, as by an interrupted copy
    with pytest.raises(IngestError) as err:
        read_records(path)
    message = str(err.value)
    assert "cut.jsonl.gz" in message and "gzip" in message and "\n" not in message


def test_bom_and_crlf(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(ROWS, end="\r\n"))
    kept, rejected = read_records(path)
    assert kept.height == 30 and rejected.height == 0
    assert not kept["text"][0].startswith("\ufeff")
    csv = tmp_path / "windows.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt,response\r\nhello there,hi\r\nhow are you,fine\r\n")
    kept, rejected = read_records(csv)
    assert kept.height == 2 and rejected.height == 0
    assert kept["messages"][0].to_list()[0]["content"] == "hello there"
    array = tmp_path / "windows.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[:4]).encode())
    assert read_records(array)[0].height == 4


@pytest.mark.parametrize("encoding,named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32"),
                                            ("latin-1", "Latin-1")])
def test_another_encoding_is_one_line_naming_it(tmp_path, encoding, named):
    rows = [{"prompt": f"Où est le café n°{i} ?", "response": "Derrière l'église, à gauche."} for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(encoding))
    with pytest.raises(IngestError) as err:
        read_records(path)
    assert "rows.jsonl" in str(err.value) and named in str(err.value) and "iconv" in str(err.value)


def test_one_broken_line_in_a_utf8_file_is_that_rows_rejection(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl_bytes(ROWS[:5]) + b'{"text": "caf\xe9"}\n' + jsonl_bytes(ROWS[5:9]))
    kept, rejected = read_records(path)
    assert kept.height == 9 and rejected["reason"].to_list() == ["invalid_utf8"]
    assert "0xE9" in rejected["detail"][0]


def test_content_parts(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name a colour."},
                                                   {"type": "text", "text": "One word."}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                   {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
                      {"role": "assistant", "content": "A cat."}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "…"}}]},
                      {"role": "assistant", "content": "Hello."}]},
        {"messages": [{"role": "user", "content": ["no type here"]}, {"role": "assistant", "content": "x"}]},
    ]
    path = tmp_path / "parts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, rejected = read_records(path)
    assert kept["messages"][0].to_list()[0]["content"] == "Name a colour.\nOne word."
    assert kept["messages"][0].to_list()[1]["content"] == "Blue."
    assert rejected["reason"].to_list() == ["non_text_part", "non_text_part", "wrong_type"]
    assert "'image_url'" in rejected["detail"][0] and "'input_audio'" in rejected["detail"][1]


def test_invalid_unicode_is_a_rejection_naming_field_and_code_point(tmp_path):
    lines = [json.dumps(r) for r in ROWS[:5]]
    lines.append('{"messages": [{"role": "user", "content": "half a pair \\ud800 here"}, '
                 '{"role": "assistant", "content": "ok"}]}')
    lines.append('{"text": "a NUL \\u0000 inside"}')
    lines.append('{"text": "fine", "note": "\\udfff in a user column"}')
    lines.append('{"text": "an escape \\u001b[31m red"}')
    lines.append('{"text": "tabs\\tand\\r\\nline ends\\fand \\u000b are whitespace"}')
    lines += [json.dumps(r) for r in ROWS[5:10]]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    kept, rejected = read_records(path)
    assert kept.height == 11
    assert rejected["reason"].to_list() == ["invalid_unicode"] * 4
    details = rejected["detail"].to_list()
    assert "messages[0].content holds a lone surrogate U+D800" in details[0]
    assert "U+0000" in details[1] and "note holds a lone surrogate U+DFFF" in details[2] and "U+001B" in details[3]
    rejected.write_parquet(tmp_path / "r.parquet")  # what crashed runs: writing a surrogate as UTF-8


def test_deep_nesting_is_a_rejection(tmp_path):
    path = tmp_path / "deep.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"text": "x", "meta": ' + deep + "}\n"
                    + '{"text": "y", "meta": ' + "[" * 100 + "]" * 100 + "}\n")
    kept, rejected = read_records(path)
    assert kept.height == 1 and rejected["reason"].to_list() == ["too_deep", "too_deep"]


def test_user_columns_of_mixed_types_are_kept_as_json_text_not_cast(tmp_path):
    rows = [{"text": "a", "meta": {"b": 1}}, {"text": "b", "meta": 1}, {"text": "c", "meta": {"c": "x"}},
            {"text": "d", "tags": [1, "x"]}, {"text": "e", "empty": {}}, {"text": "f", "n": 1}, {"text": "g", "n": 2.5}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, rejected = read_records(path)
    assert kept.height == 7 and rejected.height == 0
    assert [json.loads(v) if v else v for v in kept["meta"].to_list()] == [{"b": 1}, 1, {"c": "x"}, None, None, None,
                                                                           None]
    assert kept["n"].to_list() == [None] * 5 + [1.0, 2.5]
    kept.write_parquet(tmp_path / "k.parquet")


def test_pond_run_goes_on_past_a_lone_surrogate(tmp_path):
    """The row that killed whole runs: `pond run` ends, and the row is in ingest's rejections."""
    (tmp_path / "raw.jsonl").write_text("\n".join(
        [json.dumps(r) for r in ROWS[:10]]
        + ['{"messages": [{"role": "user", "content": "\\ud83d broken emoji"}, {"role": "assistant", "content": "x"}]}']
        + [json.dumps(r) for r in ROWS[10:20]]) + "\n")
    (tmp_path / "r.yaml").write_text("name: t\ninput: {path: raw.jsonl}\nsteps:\n  - exact_dedup: {}\n"
                                     "  - pii: {action: redact}\n")
    res = subprocess.run([sys.executable, "-m", "pond.cli", "run", "r.yaml", "--out", "run"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    rejected = pl.read_parquet(next((tmp_path / "run" / "steps").glob("*ingest*")) / "rejected.parquet")
    assert rejected["reason"].to_list() == ["invalid_unicode"] and rejected["line"].to_list() == [11]
    assert pl.read_parquet(tmp_path / "run" / "curated.parquet").height == 20


def test_a_user_column_typed_differently_in_two_batches(tmp_path, monkeypatch):
    """Batch 1 holds `meta` as integers, batch 2 as objects: the run joins them as JSON text, part by part."""
    import curation.ingest

    monkeypatch.setattr(curation.ingest, "BATCH_ROWS", 3)
    rows = [{"text": f"row {i}", "meta": i} for i in range(3)] + [{"text": f"row {i}", "meta": {"k": i}}
                                                                  for i in range(3, 6)]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from pond.recipe import parse_recipe
    from pond.runner import Runner

    runner = Runner(parse_recipe("name: t\ninput: {path: raw.jsonl}\n"), tmp_path / "run", tmp_path,
                    cache_dir=tmp_path / "cache")
    step_dir, _ = runner.ingest()
    kept = pl.read_parquet(step_dir / "kept.parquet")
    assert [json.loads(v) for v in kept["meta"].to_list()] == [0, 1, 2, {"k": 3}, {"k": 4}, {"k": 5}]
    assert read_records(tmp_path / "raw.jsonl")[0]["meta"].to_list() == kept["meta"].to_list()
