"""Ingest: every format and layout, every kind of bad row and bad file, stable ids, extra columns."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from curation.ingest import IngestError, InputOptions, iter_batches, read_records
from curation.records import render_text, validate_records

CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
LAYOUT_ROWS = {
    "messages": {"messages": CHAT, "doc_id": 7},
    "sharegpt": {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."}],
                 "doc_id": 7},
    "alpaca": {"instruction": "What is", "input": "2+2?", "output": "4.", "doc_id": 7},
    "prompt_response": {"prompt": "What is 2+2?", "response": "4.", "doc_id": 7},
    "text": {"text": "Two and two make four.", "doc_id": 7},
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def ingest(path, **kw) -> tuple[pl.DataFrame, pl.DataFrame]:
    return read_records(str(path), **kw)


@pytest.mark.parametrize("layout", list(LAYOUT_ROWS))
@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_every_format_and_layout(tmp_path, fmt, layout):
    row = LAYOUT_ROWS[layout]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, [row, row])
    elif fmt == "json":
        path.write_text(json.dumps([row, row], indent=2))
    elif fmt == "parquet":
        pl.DataFrame([row, row]).write_parquet(path)
    else:
        if layout in ("messages", "sharegpt"):
            pytest.skip("nested conversations do not fit CSV cells")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerows([row, row])
    kept, rejected = ingest(path)
    assert len(kept) == 2 and len(rejected) == 0
    validate_records(kept)
    if layout == "text":
        assert kept["text"][0] == "Two and two make four." and kept["messages"][0].to_list() == []
    else:
        messages = kept["messages"][0].to_list()
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[-1]["content"] == "4."
        assert kept["text"][0] == render_text(messages)
    # the user's own column rides along (CSV has no types: it comes back as text)
    assert str(kept["doc_id"][0]) == "7"
    assert kept["id"].n_unique() == 2  # identical rows at different positions: different ids


def test_sharegpt_roles_in_the_wild(tmp_path):
    roles = ["human", "gpt", "user", "assistant", "system", "chatgpt", "bing", "bard"]
    row = {"conversations": [{"from": r, "value": f"turn by {r}"} for r in roles]}
    kept, _ = ingest(write_jsonl(tmp_path / "x.jsonl", [row]))
    got = [m["role"] for m in kept["messages"][0].to_list()]
    assert got == ["user", "assistant", "user", "assistant", "system", "assistant", "assistant", "assistant"]


def test_bad_rows_become_rejections_with_reasons_and_lines(tmp_path):
    good = {"messages": CHAT}
    lines = [
        json.dumps(good),                                                    # 1 ok
        "{not json",                                                         # 2 bad_json
        json.dumps({"messages": [{"role": "user", "content": ""}]}),         # 3 empty_content
        json.dumps({"messages": [{"role": "user"}]}),                        # 4 missing_content
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),     # 5 unknown_role
        json.dumps({"messages": "hello"}),                                   # 6 wrong_type
        json.dumps({"foo": 1}),                                              # 7 unknown_layout
        json.dumps([1, 2]),                                                  # 8 not_an_object
        json.dumps({"messages": []}),                                        # 9 empty_conversation
        json.dumps({"prompt": "q", "response": 3}),                          # 10 wrong_type
    ]
    path = tmp_path / "bad.jsonl"
    with open(path, "wb") as f:
        for line in lines:
            f.write(line.encode() + b"\n")
        f.write(b'{"text": "caf\xe9 au lait"}\n')                              # 11 invalid_utf8
    kept, rejected = ingest(path)
    assert len(kept) == 1
    assert len(kept) + len(rejected) == 11  # counts conserve
    by_line = dict(zip(rejected["line"].to_list(), rejected["reason"].to_list()))
    assert by_line == {2: "bad_json", 3: "empty_content", 4: "missing_content", 5: "unknown_role",
                       6: "wrong_type", 7: "unknown_layout", 8: "not_an_object", 9: "empty_conversation",
                       10: "wrong_type", 11: "invalid_utf8"}
    assert set(rejected["stage"]) == {"ingest"}
    assert all(d.startswith("bad.jsonl:") for d in rejected["detail"])
    assert rejected["id"].n_unique() == len(rejected)


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "x.xml").write_text("<a/>")
    (tmp_path / "cut.json").write_text('[{"text": "a"}, {"text": "b"')
    (tmp_path / "open.json").write_text('[{"text": "a"},\n')
    (tmp_path / "obj.json").write_text('{"text": "a"}')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    cases = {
        "empty.jsonl": "file is empty", "x.xml": "unknown format", "cut.json": "invalid JSON", "open.json": "not closed",
        "obj.json": "must be an array", "bad.parquet": "not a readable Parquet", "blank.jsonl": "holds no rows",
        "missing.jsonl": "no such file",
    }
    for name, phrase in cases.items():
        with pytest.raises(IngestError) as err:
            ingest(tmp_path / name)
        msg = str(err.value)
        assert name in msg and phrase in msg and "\n" not in msg, msg


def test_globs_directories_and_stable_ids(tmp_path):
    d = tmp_path / "raw"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    write_jsonl(d / "sub" / "b.jsonl", [{"text": "gamma"}])
    by_dir, _ = read_records(str(d))
    by_glob, _ = read_records(str(d / "**" / "*.jsonl"))
    assert sorted(by_dir["text"]) == ["alpha", "beta", "gamma"]
    assert sorted(by_dir["id"]) == sorted(by_glob["id"])
    again, _ = read_records(str(d))
    assert by_dir["id"].to_list() == again["id"].to_list()  # same input -> same ids


def test_limit_and_batches_conserve_counts(tmp_path, monkeypatch):
    import curation.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "BATCH_ROWS", 7)
    rows = [{"text": f"row {i}"} if i % 5 else "{broken" for i in range(50)]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    batches = list(iter_batches(InputOptions(path=str(path))))
    assert len(batches) > 3
    assert sum(len(k) + len(r) for k, r in batches) == 50
    limited = list(iter_batches(InputOptions(path=str(path), limit=12)))
    assert sum(len(k) + len(r) for k, r in limited) == 12


def test_real_sharegpt_file(tmp_path):
    from curation.sources import iter_sharegpt

    records = list(iter_sharegpt(limit=300))
    path = write_jsonl(tmp_path / "sg.jsonl", records)
    kept, rejected = ingest(path)
    assert len(kept) + len(rejected) == 300
    assert len(kept) > 250  # real dumps have some empty turns; most rows are fine
    assert set(rejected["reason"]) <= {"empty_content", "empty_conversation", "unknown_role", "missing_content"}
    assert "orig_id" in kept.columns  # the dump's own id is carried through


def test_ids_do_not_depend_on_where_the_data_sits(tmp_path):
    from curation.ingest import InputOptions, iter_batches

    rows = [{"prompt": "Why is the sky blue?", "response": "Rayleigh scattering."},
            {"prompt": "Name a prime.", "response": "Seven."}]
    ids = []
    for where in ("a", "b/c"):
        d = tmp_path / where
        d.mkdir(parents=True)
        (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        kept = pl.concat([k for k, _ in iter_batches(InputOptions(path=str(d / "data.jsonl")), tmp_path / "recipes")])
        assert kept["source"].to_list() == ["data.jsonl"] * 2
        ids.append(kept["id"].to_list())
    assert ids[0] == ids[1]
