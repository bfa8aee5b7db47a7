"""The `judge` step and pairwise comparison: protocol against real vLLM, verdict logic on a fake."""
from __future__ import annotations

import asyncio
import json
import re

import polars as pl
import pytest

from curation.step import StepContext
from synthesis.client import TeacherClient, TeacherSession
from synthesis.judge import JudgeOptions, combine_orders, estimate, judge, pairwise_judge, pairwise_many
from synthesis.rows import row_answer


def ctx_for(config, tmp_path) -> StepContext:
    return StepContext(seed=0, run_dir=tmp_path, teachers={"default": config, "judge": config})


def test_combine_orders():
    assert combine_orders("A", "B") == "a"  # a preferred in both orders
    assert combine_orders("B", "A") == "b"
    assert combine_orders("A", "A") == "tie"  # position bias: inconsistent
    assert combine_orders("tie", "B") == "tie" and combine_orders("tie", "tie") == "tie"


def test_score_mode_threshold_failures_and_alignment(fake_teacher, short_chats, tmp_path):
    df = short_chats.with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(pl.col("messages").list.head(1)).otherwise(pl.col("messages"))
        .alias("messages"))  # row 2 has no answer
    answers = [row_answer(r) for r in df.to_dicts()]
    doomed = " ".join(answers[5].split())

    def score_for(text: str) -> int:
        return 1 + len(text) % 10

    def reply(body, i):  # the fake judge scores by the length of the answer it was shown
        shown = re.search(r"\[Assistant answer\]\n(.*)\n\nReply in JSON", body["messages"][0]["content"], re.S)[1]
        return json.dumps({"reason": f"len {len(shown)}", "score": score_for(shown)})

    fake_teacher.reply = reply
    fake_teacher.rule = lambda body: "500" if doomed in body["messages"][0]["content"] else "ok"
    ctx = ctx_for(fake_teacher.config(max_retries=0), tmp_path)
    kept, rejected = judge(df, JudgeOptions(min_score=6, teacher="judge"), ctx)
    assert len(kept) + len(rejected) == len(df)
    assert set(kept.columns) == set(df.columns) | {"judge_score", "judge_reason"}
    expected = {r["id"]: score_for(" ".join(a.split())) for r, a in zip(df.to_dicts(), answers)}
    for row in kept.to_dicts():
        assert row["judge_score"] == expected[row["id"]] >= 6 and row["judge_reason"].startswith("len ")
    by_id = {r["id"]: r for r in rejected.to_dicts()}
    assert by_id[df["id"][2]]["reason"] == "nothing to judge: empty answer"
    assert by_id[df["id"][5]]["reason"].startswith("judge call failed") and by_id[df["id"][5]]["judge_score"] is None
    low = [r for r in by_id.values() if r["reason"].startswith("judge score")]
    assert low and all(r["judge_score"] == expected[r["id"]] < 6 for r in low)
    assert all(re.match(r"judge score \d+ < 6: len \d+", r["reason"]) for r in low)
    assert kept["doc_id"].to_list() == [d for i, d in zip(df["id"], df["doc_id"]) if i in set(kept["id"])]
    assert ctx.stats["judged"] == len(df) - 1 and ctx.stats["teacher"]["failed"] == 1


def test_pairwise_step_on_fake(fake_teacher, short_chats, tmp_path):
    df = short_chats.head(6).with_columns(
        pl.Series("other", ["GOOD other", "bad other", "GOOD other", "bad other", "bad other", "GOOD other"]),
        pl.Series("messages", [[m[0], {"role": "assistant", "content": ans}] for m, ans in zip(
            short_chats.head(6)["messages"], ["GOOD a", "GOOD a", "bad a", "bad a", "GOOD a", "GOOD a"])]))

    def reply(body, i):  # a consistent judge: the answer containing GOOD wins, else tie
        text = body["messages"][0]["content"]
        a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S)[1]
        b = re.search(r"\[Answer B\]\n(.*?)\n\nDo not", text, re.S)[1]
        winner = "A" if "GOOD" in a and "GOOD" not in b else "B" if "GOOD" in b and "GOOD" not in a else "tie"
        return json.dumps({"reason": "r", "winner": winner})

    fake_teacher.reply = reply
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = judge(df, JudgeOptions(mode="pairwise", against="other"), ctx)
    winners = dict(zip(kept["id"], kept["judge_winner"])) | dict(zip(rejected["id"], rejected["judge_winner"]))
    assert [winners[i] for i in df["id"]] == ["tie", "a", "b", "tie", "a", "tie"]
    assert rejected["id"].to_list() == [df["id"][2]]
    assert rejected["reason"][0].startswith("lost pairwise to other")
    assert len(fake_teacher.bodies) == 12  # both orders for every row
    with pytest.raises(ValueError, match="against"):
        judge(df, JudgeOptions(mode="pairwise"), ctx)


def test_judge_only_synthetic_rows(fake_teacher, short_chats, tmp_path):
    df = short_chats.head(6).with_columns(
        pl.Series("source", ["a.jsonl", "synthetic:edge_cases", "a.jsonl", "synthetic:edge_cases",
                             "synthetic:evolve", "a.jsonl"]))
    fake_teacher.reply = lambda body, i: json.dumps({"reason": "weak", "score": 2})
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = judge(df, JudgeOptions(min_score=5, rows="synthetic"), ctx)
    assert len(fake_teacher.bodies) == 3  # only the synthetic rows were sent
    assert kept["id"].to_list() == [df["id"][i] for i in (0, 2, 5)]  # real rows pass through, in order
    assert kept["judge_score"].null_count() == 3
    assert sorted(rejected["id"]) == sorted(df["id"][i] for i in (1, 3, 4))
    assert ctx.stats["judged"] == 3 and ctx.stats["passed_unjudged"] == 3
    assert estimate(df, JudgeOptions(rows="synthetic"))["requests"] == 3
    assert estimate(df, JudgeOptions(rows="real"))["requests"] == 3


def test_position_biased_judge_gives_ties(fake_teacher, tmp_path):
    fake_teacher.reply = lambda body, i: json.dumps({"reason": "first is best", "winner": "A"})
    results = pairwise_many(TeacherSession(fake_teacher.config()), [("q", "x", "y"), ("q2", "u", "v")])
    assert [r.winner for r in results] == ["tie", "tie"] and results[0].first == results[0].second == "A"


def test_judge_estimate(short_chats):
    score = estimate(short_chats, JudgeOptions())
    pair = estimate(short_chats.with_columns(pl.col("text").alias("other")),
                    JudgeOptions(mode="pairwise", against="other"))
    assert score["requests"] == len(short_chats) and pair["requests"] == 2 * len(short_chats)
    assert pair["max_tokens"] > score["max_tokens"] > len(short_chats) * 100


# ------------------------------------------------------------------------------ real vLLM


@pytest.mark.teacher
def test_score_mode_against_vllm(teacher_server, short_chats, tmp_path):
    df = short_chats.head(4)
    before = teacher_server.metrics()
    ctx = ctx_for(teacher_server.config(), tmp_path)
    kept, rejected = judge(df, JudgeOptions(min_score=8, max_reason_chars=60), ctx)
    after = teacher_server.metrics()
    assert after["http_chat_requests"] - before["http_chat_requests"] == len(df) == ctx.stats["teacher"]["sent"]
    assert len(kept) + len(rejected) == len(df)
    scores = kept["judge_score"].to_list() + rejected["judge_score"].to_list()
    assert all(isinstance(s, int) and 1 <= s <= 10 for s in scores)  # schema-constrained: always parsable
    assert all(len(r) <= 60 for r in kept["judge_reason"].to_list() + rejected["judge_reason"].to_list())
    assert (kept["judge_score"] >= 8).all() and (rejected["judge_score"] < 8).all()
    assert all(r.startswith(f"judge score {s} < 8") for r, s in zip(rejected["reason"], rejected["judge_score"]))


@pytest.mark.teacher
def test_pairwise_judge_against_vllm(teacher_server):
    before = teacher_server.metrics()

    async def main():
        async with TeacherClient(teacher_server.config()) as client:
            return await pairwise_judge(client, "What is the capital of France?", "Paris.", "I like turtles.",
                                        max_reason_chars=40)

    assert asyncio.run(main()) in ("a", "b", "tie")
    assert teacher_server.metrics()["http_chat_requests"] - before["http_chat_requests"] == 2
