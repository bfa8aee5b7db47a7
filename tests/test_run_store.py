"""The run folder's markers and digests go through curation.store: a step's DONE, a drop's DONE, the
digest of a step output (file or shard folder), and the export's two files."""
from __future__ import annotations

import polars as pl

from curation import store
from pond import layout
from pond.executors.shards import POS, output_digest, write_shard
from pond.export.chat import write_rows


def test_a_step_is_done_with_its_fingerprint_only(tmp_path):
    store.mark_finished(tmp_path, "fp-1")
    assert layout.is_done(tmp_path, "fp-1") and not layout.is_done(tmp_path, "fp-2")


def test_a_step_done_by_an_older_pond_still_resumes(tmp_path):
    (tmp_path / layout.DONE).write_text("fp-old\n")  # the runner's DONE before the store: the fingerprint alone
    assert layout.is_done(tmp_path, "fp-old")


def test_a_drop_finished_by_an_older_pond_is_finished(tmp_path):
    (tmp_path / layout.DONE).write_text('{"kept": 3}\n')  # a drop's DONE before the store: its facts alone
    assert store.finished(tmp_path)


def test_the_funnel_counts_a_step_done_only_with_its_marker(tmp_path):
    for name, marked in (("00-ingest", True), ("01-pii", False)):
        step = layout.step_dir(tmp_path, name)
        step.mkdir(parents=True)
        store.write_json({"in": 2, "out": 1}, step / layout.STATS)
        if marked:
            store.mark_finished(step, "fp")
    assert [(r["step"], r["status"]) for r in layout.funnel(tmp_path)] == [("00-ingest", "done"),
                                                                           ("01-pii", "unfinished")]


def test_a_step_output_digest_is_the_store_digest(tmp_path):
    df = pl.DataFrame({"id": ["a", "b", "c"], POS: [0, 1, 2]})
    store.write_parquet(df.drop(POS), tmp_path / "kept.parquet")
    assert output_digest(tmp_path / "kept.parquet") == store.file_digest(tmp_path / "kept.parquet")
    shards = tmp_path / "shards"
    write_shard(df[:2], shards)
    write_shard(df[2:], shards)
    assert output_digest(shards) == store.file_digest(shards)
    (shards / "worker.log").write_text("not an output")  # a shard folder's digest is its shards'
    assert output_digest(shards) != store.file_digest(shards)
    (shards / "worker.log").unlink()
    assert output_digest(shards) == store.file_digest(shards)


def test_an_export_writes_its_problems_only_when_a_row_has_one(tmp_path):
    ok = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data, problems = tmp_path / "data.jsonl", tmp_path / "problems.jsonl"
    assert write_rows(iter([("a", ok), ("b", [])]), "openai", data, problems) == (1, 1)
    assert problems.exists()
    assert write_rows(iter([("a", ok)]), "openai", data, problems) == (1, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]  # the old problems gone, no temporaries


def test_benchmark_answers_are_made_once_per_key(tmp_path):
    from contextlib import contextmanager

    from evaluation.benchmark_eval import ANSWERS_DONE, answer_benchmark
    from evaluation.config import EvaluateConfig

    questions = pl.DataFrame({"question_id": ["q1"], "category": ["math"], "turns": [["2+2?", "and 3+3?"]]})
    asked = []

    @contextmanager
    def answerer(models):
        def answer(chats):
            asked.append(chats)
            return {m: [f"answer {len(asked)}"] * len(c) for m, c in chats.items()}
        yield answer

    config = EvaluateConfig(heldout="unused", benchmark_turns=2)
    first = answer_benchmark(tmp_path, questions, {"base": None}, config, answerer=answerer)
    assert len(asked) == 2 and store.finished(tmp_path, name=ANSWERS_DONE)
    assert store.finished_facts(tmp_path, name=ANSWERS_DONE)["turns"] == 2  # what made them, for a reader
    again = answer_benchmark(tmp_path, questions, {"base": None}, config, answerer=answerer)
    assert len(asked) == 2 and again.equals(first)  # same key: nothing asked
    answer_benchmark(tmp_path, questions, {"base": None}, config.model_copy(update={"benchmark_turns": 1}),
                     answerer=answerer)
    assert len(asked) == 3  # another key: answered again
