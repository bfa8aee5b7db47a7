"""The `judge` step and pairwise comparison: protocol against real vLLM, verdict logic on a fake."""
from __future__ import annotations

import asyncio
import json
import re

import polars as pl
import pytest

from curation.step import StepContext
from pond.pipeline import estimate_run
from pond.recipe import parse_recipe
from pond.runner import Runner
from synthesis.client import TeacherClient, TeacherSession
from synthesis.judge import JudgeOptions, combine_orders, estimate, judge, pairwise_judge, pairwise_many
from synthesis.rows import row_answer
from synthesis.teachers import Teachers


def ctx_for(config, tmp_path, run: str = "run") -> StepContext:
    # the shared teacher cache goes to the test's own folder: replies of an earlier test session must not answer
    return StepContext(seed=0, run_dir=tmp_path / run, cache_dir=tmp_path / "cache",
                       teachers=Teachers({"default": config, "judge": config}))


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
    kept, rejected = judge(df, JudgeOptions(calibrate=False, min_score=6, teacher="judge"), ctx)
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
    kept, rejected = judge(df, JudgeOptions(calibrate=False, mode="pairwise", against="other"), ctx)
    winners = dict(zip(kept["id"], kept["judge_winner"])) | dict(zip(rejected["id"], rejected["judge_winner"]))
    assert [winners[i] for i in df["id"]] == ["tie", "a", "b", "tie", "a", "tie"]
    assert rejected["id"].to_list() == [df["id"][2]]
    assert rejected["reason"][0].startswith("lost pairwise to other")
    assert len(fake_teacher.bodies) == 12  # both orders for every row
    with pytest.raises(ValueError, match="against"):
        judge(df, JudgeOptions(calibrate=False, mode="pairwise"), ctx)


def test_judge_only_synthetic_rows(fake_teacher, short_chats, tmp_path):
    df = short_chats.head(6).with_columns(
        pl.Series("source", ["a.jsonl", "synthetic:edge_cases", "a.jsonl", "synthetic:edge_cases",
                             "synthetic:evolve", "a.jsonl"]))
    fake_teacher.reply = lambda body, i: json.dumps({"reason": "weak", "score": 2})
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = judge(df, JudgeOptions(calibrate=False, min_score=5, rows="synthetic"), ctx)
    assert len(fake_teacher.bodies) == 3  # only the synthetic rows were sent
    assert kept["id"].to_list() == [df["id"][i] for i in (0, 2, 5)]  # real rows pass through, in order
    assert kept["judge_score"].null_count() == 3
    assert sorted(rejected["id"]) == sorted(df["id"][i] for i in (1, 3, 4))
    assert ctx.stats["judged"] == 3 and ctx.stats["passed_unjudged"] == 3
    assert estimate(df, JudgeOptions(calibrate=False, rows="synthetic"))["requests"] == 3
    assert estimate(df, JudgeOptions(calibrate=False, rows="real"))["requests"] == 3


def test_position_biased_judge_gives_ties(fake_teacher, tmp_path):
    fake_teacher.reply = lambda body, i: json.dumps({"reason": "first is best", "winner": "A"})
    results = pairwise_many(TeacherSession(fake_teacher.config()), [("q", "x", "y"), ("q2", "u", "v")])
    assert [r.winner for r in results] == ["tie", "tie"] and results[0].first == results[0].second == "A"


def test_judge_estimate(short_chats):
    score = estimate(short_chats, JudgeOptions(calibrate=False))
    pair = estimate(short_chats.with_columns(pl.col("text").alias("other")),
                    JudgeOptions(calibrate=False, mode="pairwise", against="other"))
    assert score["requests"] == len(short_chats) and pair["requests"] == 2 * len(short_chats)
    assert pair["max_tokens"] > score["max_tokens"] > len(short_chats) * 100


def test_scorer_keeps_every_judged_row_and_rejects_the_unreadable(fake_teacher, short_chats, tmp_path):
    df = short_chats.head(8)
    bad, failed = df["messages"][3][0]["content"], df["messages"][5][0]["content"]

    def reply(body, i):
        text = body["messages"][0]["content"]
        return "no json here" if bad in text else json.dumps({"reason": "ok", "score": 1 + len(text) % 10})

    fake_teacher.reply = reply
    fake_teacher.rule = lambda body: "500" if failed in body["messages"][0]["content"] else "ok"
    ctx = ctx_for(fake_teacher.config(max_retries=0), tmp_path)
    kept, rejected = judge(df, JudgeOptions(calibrate=False, min_score=None), ctx)
    assert sorted(rejected["id"]) == sorted([df["id"][3], df["id"][5]])  # nothing dropped for its score
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert reasons[df["id"][3]].startswith("unusable judge reply")
    assert reasons[df["id"][5]].startswith("judge call failed")
    assert kept["judge_score"].null_count() == 0 and len(kept) == 6  # never a missing score kept
    assert kept["judge_score"].min() < 7  # the default threshold would have dropped some
    st = ctx.stats
    assert st["min_score"] is None and st["scored"] == st["score"]["count"] == 6 and st["judged"] == 8
    assert st["score"]["min"] == kept["judge_score"].min() and sum(st["score_histogram"].values()) == 6
    assert JudgeOptions().min_score == 7


def test_complexity_in_a_second_column(fake_teacher, short_chats, tmp_path):
    df = short_chats.head(5)
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    quality, _ = judge(df, JudgeOptions(calibrate=False, min_score=None), ctx)
    fake_teacher.bodies.clear()
    both, rejected = judge(quality, JudgeOptions(calibrate=False, min_score=None, rubric="complexity", column="complexity"), ctx)
    assert len(both) == 5 and rejected.is_empty()
    assert both["judge_score"].to_list() == quality["judge_score"].to_list()  # the first column untouched
    assert {"judge_reason", "complexity", "complexity_reason"} <= set(both.columns)
    assert both["complexity"].null_count() == 0 and ctx.stats["column"] == "complexity"
    shown = [b["messages"][0]["content"] for b in fake_teacher.bodies]
    # the complexity template shows the instruction only, under the complexity rubric
    assert len(shown) == 5 and all("Complexity:" in t and "[Assistant answer]" not in t for t in shown)
    assert JudgeOptions(column="quality_score").reason_column == "quality_reason"
    for name in ("text", "reason", "judge_winner", "x_reason", "bad name"):
        with pytest.raises(ValueError):
            JudgeOptions(column=name)


def test_rows_outside_scope_keep_an_earlier_score(fake_teacher, short_chats, tmp_path):
    df = short_chats.head(4).with_columns(pl.Series("source", ["a", "synthetic:x", "a", "synthetic:x"]))
    fake_teacher.reply = lambda body, i: json.dumps({"reason": "r", "score": 3})
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    first, _ = judge(df, JudgeOptions(calibrate=False, min_score=None, rows="synthetic"), ctx)
    fake_teacher.reply = lambda body, i: json.dumps({"reason": "r", "score": 9})
    second, _ = judge(first, JudgeOptions(calibrate=False, min_score=None, rows="real"), ctx)
    assert second["judge_score"].to_list() == [9, 3, 9, 3]


RECIPE = """\
name: {name}
input: {{path: rows.jsonl}}
steps:
  - judge: {{min_score: null, teacher: judge, calibrate: false}}
{extra}teachers:
  judge: {{base_url: "{url}", model: fake, backoff_s: 0.01}}
"""


def test_a_second_run_folder_and_recipe_send_nothing(fake_teacher, short_chats, tmp_path, monkeypatch):
    monkeypatch.setenv("POND_CACHE_DIR", str(tmp_path / "cache"))
    with open(tmp_path / "rows.jsonl", "w") as f:
        for m in short_chats["messages"].to_list():
            f.write(json.dumps({"messages": m}) + "\n")

    def recipe(name: str, extra: str = ""):
        return parse_recipe(RECIPE.format(name=name, extra=extra, url=fake_teacher.base_url), f"{name}.yaml")

    lines: list[str] = []
    first = recipe("a")
    est = estimate_run(first, tmp_path / "a", tmp_path, print_fn=lines.append)
    n = len(short_chats)
    assert est["requests"] == n and fake_teacher.chat_requests() == 0  # the estimate sends nothing
    assert re.match(rf"01-judge: {n} requests, at most \d+ prompt \+ \d+ completion tokens, 0 more already cached",
                    lines[0]), lines
    Runner(first, tmp_path / "a", tmp_path).curate()
    assert fake_teacher.chat_requests() == n
    lines.clear()
    assert estimate_run(first, tmp_path / "b", tmp_path, print_fn=lines.append)["requests"] == 0
    assert f"0 requests, at most 0 prompt + 0 completion tokens, {n} more already cached (free)" in lines[0]
    # another recipe, in another run folder, ranking by the score: every judge call is a cache hit
    second = recipe("b", "  - select: {n: 3, strategy: quality, score: {judge_score: 1}}\n")
    Runner(second, tmp_path / "b", tmp_path).curate()
    assert fake_teacher.chat_requests() == n
    stats = json.loads((tmp_path / "b" / "steps" / "01-judge" / "stats.json").read_text())
    assert stats["teacher"].get("sent", 0) == 0 and stats["teacher"]["cache_hits"] == n
    curated = pl.read_parquet(tmp_path / "b" / "curated.parquet")
    assert len(curated) == 3 and curated["judge_score"].min() >= stats["score"]["p50"]


def test_estimate_counts_cached_calls_as_free(fake_teacher, short_chats, tmp_path):
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    df = short_chats.head(6)
    before = estimate(df, JudgeOptions(calibrate=False), ctx)
    assert before["requests"] == 6 and before["cached"] == 0 and not (tmp_path / "cache").exists()  # creates nothing
    assert before["max_tokens"] == before["prompt_tokens"] + before["completion_tokens"]
    judge(df.head(4), JudgeOptions(calibrate=False), ctx)
    after = estimate(df, JudgeOptions(calibrate=False), ctx)
    assert after["requests"] == 2 and after["cached"] == 4 and after["prompt_tokens"] < before["prompt_tokens"]
    # the cache is keyed by the full request: another rubric or temperature is not a hit
    assert estimate(df, JudgeOptions(calibrate=False, rubric="correctness"), ctx)["cached"] == 0
    assert estimate(df, JudgeOptions(calibrate=False, temperature=0.5), ctx)["cached"] == 0


# ------------------------------------------------------------------------------ real vLLM


@pytest.mark.teacher
def test_score_mode_against_vllm(teacher_server, short_chats, tmp_path):
    df = short_chats.head(4)
    before = teacher_server.metrics()
    ctx = ctx_for(teacher_server.config(), tmp_path)
    kept, rejected = judge(df, JudgeOptions(calibrate=False, min_score=8, max_reason_chars=60), ctx)
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


def test_the_verdict_alone_asks_for_no_reason_and_allows_none():
    from synthesis.judge import pairwise_requests, score_request

    with_reason = score_request("What is 2+2?", "4", "helpfulness", max_reason_chars=160)
    alone = score_request("What is 2+2?", "4", "helpfulness", max_reason_chars=0)
    assert '"reason"' in with_reason.messages[0]["content"]
    assert '"reason"' not in alone.messages[0]["content"] and '{"score": <1-10>}' in alone.messages[0]["content"]
    assert alone.schema["required"] == ["score"] and alone.max_tokens < with_reason.max_tokens
    a, b = pairwise_requests("Q", "x", "y", "helpfulness", max_reason_chars=0)
    assert a.schema["required"] == ["winner"] and '"reason"' not in a.messages[0]["content"]
    assert JudgeOptions(max_reason_chars=0).max_reason_chars == 0
