"""Decontamination: copies of eval rows (normalised) are caught and named, short overlaps and
n-grams spanning turns are not, and on real ShareGPT rows every rejection is re-derived."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.decontaminate import DecontaminateOptions, decontaminate
from curation.ingest import read_records, records_from_dicts
from curation.shingles import reference_tokens
from curation.step import StepContext

EVAL_Q = "Explain in detail why the sky appears blue during the day but turns red and orange at sunset"
EVAL_A = "Sunlight scatters off air molecules and shorter blue wavelengths scatter far more than the longer red ones"
EVAL_TEXT = "The quick brown fox jumps over the lazy dog while the old cat watches from the warm windowsill"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def eval_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "eval.jsonl", [
        {"messages": [{"role": "user", "content": EVAL_Q}, {"role": "assistant", "content": EVAL_A}]},
        {"text": EVAL_TEXT},
    ])
    return tmp_path


def eval_ids(path: Path) -> list[str]:
    return read_records(str(path))[0]["id"].to_list()


def run(train: list[dict], eval_dir: Path, **opts) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    ctx = StepContext(base_dir=eval_dir)
    df = records_from_dicts(train, source="train")
    kept, rejected = decontaminate(df, DecontaminateOptions(against="eval.jsonl", **opts), ctx)
    assert len(kept) + len(rejected) == len(df)
    return kept, rejected, ctx.stats


def test_copies_are_caught_whatever_the_case_and_punctuation(eval_dir):
    q_id, text_id = eval_ids(eval_dir / "eval.jsonl")
    train = [
        {"messages": [{"role": "user", "content": "Q: " + EVAL_Q.upper() + "?!"}, {"role": "assistant", "content": "ok"}]},
        {"text": "Story time. " + EVAL_TEXT.replace(" the ", ", the ") + ". The end."},
        {"text": "Cooking pasta needs a big pot of salted boiling water and a little patience, nothing more."},
    ]
    kept, rejected, stats = run(train, eval_dir)
    assert kept["text"].to_list() == [train[2]["text"]]
    assert rejected["reason"].to_list() == [f"eval_overlap:{q_id}", f"eval_overlap:{text_id}"]
    assert rejected["contaminated_by"].to_list() == [q_id, text_id]
    assert set(rejected["stage"]) == {"decontaminate"}
    assert stats["eval_rows"] == 2 and stats["contaminated"] == 2


def test_short_overlaps_are_ignored(eval_dir):
    twelve = " ".join(EVAL_TEXT.split()[:12])
    thirteen = " ".join(EVAL_TEXT.split()[:13])
    kept, rejected, _ = run([{"text": f"Earlier: {twelve}. Later something else."}, {"text": thirteen}], eval_dir)
    assert kept["text"].to_list() == [f"Earlier: {twelve}. Later something else."]
    assert rejected["text"].to_list() == [thirteen]
    # a smaller n catches the 12-word overlap too
    kept, rejected, _ = run([{"text": f"Earlier: {twelve}. Later something else."}], eval_dir, ngram=8)
    assert len(rejected) == 1


def test_ngrams_do_not_span_turns(eval_dir):
    words = EVAL_A.split()
    # the answer's words split over two turns: no single turn holds 13 of them in a row
    train = [{"messages": [{"role": "user", "content": " ".join(words[:8])},
                           {"role": "assistant", "content": " ".join(words[8:])}]}]
    kept, rejected, _ = run(train, eval_dir)
    assert len(kept) == 1 and len(rejected) == 0


def test_min_shared_and_several_eval_files(eval_dir):
    write_jsonl(eval_dir / "more.jsonl", [{"text": "Completely different held out text about the history of bicycles "
                                                   "and the invention of the pneumatic tyre in Scotland"}])
    train = [{"text": "I read about the history of bicycles and the invention of the pneumatic tyre in Scotland matter"},
             {"text": EVAL_TEXT}]
    ctx = StepContext(base_dir=eval_dir)
    df = records_from_dicts(train, source="train")
    kept, rejected = decontaminate(df, DecontaminateOptions(against=["eval.jsonl", "more.jsonl"]), ctx)
    assert len(rejected) == 2 and ctx.stats["eval_rows"] == 3
    assert sorted(rejected["shared_ngrams"].to_list()) == [2, 6]  # 14 shared words -> 2 grams; 18 -> 6
    kept, rejected = decontaminate(df, DecontaminateOptions(against=["eval.jsonl", "more.jsonl"], min_shared=3), ctx)
    assert rejected["text"].to_list() == [EVAL_TEXT]


def test_extra_columns_ride_along(eval_dir):
    kept, rejected, _ = run([{"text": EVAL_TEXT, "label": "x"}, {"text": "short", "label": "y"}], eval_dir)
    assert kept["label"].to_list() == ["y"] and rejected["label"].to_list() == ["x"]


def test_missing_eval_file_is_a_clear_error(tmp_path):
    df = records_from_dicts([{"text": "anything"}])
    with pytest.raises(Exception, match="nope.jsonl"):
        decontaminate(df, DecontaminateOptions(against="nope.jsonl"), StepContext(base_dir=tmp_path))


def grams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = reference_tokens(text)
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def test_sharegpt_rows_used_as_eval_are_caught(sharegpt_df, tmp_path):
    """Real data: 25 conversations written out as an eval file (ShareGPT layout) are all found
    again in the corpus, and every rejection really shares a 13-gram with the eval set."""
    sample = sharegpt_df.head(25)
    rows = [{"conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                               for m in msgs]} for msgs in sample["messages"]]
    write_jsonl(tmp_path / "eval.jsonl", rows)
    ctx = StepContext(base_dir=tmp_path)
    kept, rejected = decontaminate(sharegpt_df, DecontaminateOptions(against="eval.jsonl"), ctx)
    eval_grams = set()
    for msgs in sample["messages"]:
        for m in msgs:
            eval_grams |= grams(m["content"], 13)
    long_enough = [i for i, msgs in zip(sample["id"], sample["messages"]) if any(grams(m["content"], 13) for m in msgs)]
    assert set(long_enough) <= set(rejected["id"])
    for msgs in rejected["messages"]:
        assert any(grams(m["content"], 13) & eval_grams for m in msgs)
    for msgs in kept["messages"].head(100):
        assert not any(grams(m["content"], 13) & eval_grams for m in msgs)


def test_ngrams_common_in_the_input_count_as_boilerplate(tmp_path):
    closer = "I hope this helps! Let me know if you have any other questions."
    write_jsonl(tmp_path / "eval.jsonl", [{"messages": [{"role": "user", "content": "How do I sort a list in Python?"},
                                                        {"role": "assistant", "content": "Use sorted(xs). " + closer}]}])
    train = [{"messages": [{"role": "user", "content": f"Question number {i}"},
                           {"role": "assistant", "content": f"Answer number {i}. {closer}"}]} for i in range(12)]
    df = records_from_dicts(train, source="train")
    ctx = StepContext(base_dir=tmp_path)
    kept, rejected = decontaminate(df, DecontaminateOptions(against="eval.jsonl"), ctx)
    assert len(rejected) == 0 and ctx.stats["boilerplate_ngrams_ignored"] == 1
    kept, rejected = decontaminate(df, DecontaminateOptions(against="eval.jsonl", max_row_frequency=None), ctx)
    assert len(rejected) == 12
    kept, rejected = decontaminate(df.head(5), DecontaminateOptions(against="eval.jsonl"), ctx)
    assert len(rejected) == 5  # rare in the input: a real overlap


def test_an_evaluation_set_named_is_found_where_pond_keeps_it(tmp_path, monkeypatch):
    """`against: [held-out file, alpaca_eval]`: the reference answers the verdict is scored on, read from the
    installed package (curation.eval_sets), beside a file of a relative run folder (`--out runs/x`), so a pool row
    quoting one is rejected naming it; a row quoting none stays."""
    from curation.eval_sets import eval_set_path

    ref = read_records([str(eval_set_path("alpaca_eval"))])[0]
    quoted = " ".join(ref["messages"][3][-1]["content"].split()[:20])
    pool = records_from_dicts([{"prompt": "tell me something", "response": f"Sure. {quoted}"},
                               {"prompt": "hello there my friend", "response": "hello to you too, how are you today?"}])
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "heldout.jsonl", [{"text": EVAL_TEXT}])
    kept, rejected = decontaminate(pool, DecontaminateOptions(against=["heldout.jsonl", "alpaca_eval"]),
                                   StepContext(base_dir=Path(".")))
    both = read_records([str(tmp_path / "heldout.jsonl"), str(eval_set_path("alpaca_eval"))])[0]
    named = both.filter(pl.col("text").str.contains(quoted, literal=True))["id"].to_list()
    assert len(kept) == 1 and len(named) == 1 and rejected["reason"].to_list() == [f"eval_overlap:{named[0]}"]
