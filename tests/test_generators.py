"""The `synthesize` step: bookkeeping against a real vLLM teacher, failures against a fake one."""
from __future__ import annotations

import json

import polars as pl
import pytest

from tests import limits

from curation.records import render_text
from curation.step import StepContext
from synthesis.generators import SynthesizeOptions, estimate, synthesize
from synthesis.rows import row_prompt
from synthesis.teachers import Teachers

# The tiny teacher rambles: a brevity system prompt and 128 tokens let most answers finish.
SMALL = {"max_tokens": 128, "max_prompt_chars": 80, "max_example_chars": 60, "min_prompt_words": 0,
         "system": "Reply in one or two short sentences."}


def ctx_for(config, tmp_path, track=None, seed=0) -> StepContext:
    ctx = StepContext(seed=seed, run_dir=tmp_path, teachers=Teachers({"default": config}))
    if track is not None:
        ctx.track = track
    return ctx


def check_bookkeeping(df: pl.DataFrame, kept: pl.DataFrame, rejected: pl.DataFrame, ctx: StepContext, gen: str):
    attempted = ctx.stats["attempted"]
    assert len(kept) + len(rejected) == len(df) + attempted
    assert kept["id"].is_unique().all()
    new = kept.filter(pl.col("source") == f"synthetic:{gen}")
    assert len(new) == ctx.stats["new_rows"]
    for row in new.to_dicts():
        assert row["id"].startswith("syn-")
        assert row["text"] == render_text(row["messages"])
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"].strip()
        assert row["messages"][-2]["role"] == "user" and row["messages"][-2]["content"].strip()
        assert row["seed_ids"] and set(row["seed_ids"]) <= set(df["id"])
    real = kept.filter(~pl.col("source").str.starts_with("synthetic:"))
    assert real["seed_ids"].list.len().max() in (0, None)
    assert set(rejected["stage"]) <= {"synthesize"}
    assert len(rejected) == 0 or rejected["reason"].str.len_chars().min() > 0
    # the user's own column rides along on the real rows
    doc_ids = dict(zip(df["id"], df["doc_id"]))
    assert dict(zip(real["id"], real["doc_id"])) == {i: doc_ids[i] for i in real["id"]}
    return new


# ------------------------------------------------------------------------------ real vLLM


@pytest.mark.teacher
@pytest.mark.parametrize("gen", ["edge_cases", "self_instruct", "evolve", "respond"])
def test_generators_against_vllm_and_their_rerun_is_free(teacher_server, short_chats, tmp_path, gen):
    opts = SynthesizeOptions(generator=gen, n=3, task="a helpful general assistant", **SMALL)
    ctx = ctx_for(teacher_server.config(), tmp_path)
    before = teacher_server.metrics()
    kept, rejected = synthesize(short_chats, opts, ctx)
    sent = teacher_server.metrics()["http_chat_requests"] - before["http_chat_requests"]
    assert sent == ctx.stats["teacher"]["sent"] <= estimate(short_chats, opts)["requests"]
    assert ctx.stats["attempted"] == 3
    new = check_bookkeeping(short_chats, kept, rejected, ctx, gen)
    assert len(new) >= 1, ctx.stats["rejected_new_by_reason"]
    if gen == "respond":
        # re-answered originals are rejected as replaced, and their new rows keep the user's columns
        replaced = rejected.filter(pl.col("reason").str.starts_with("replaced by teacher answer"))
        assert len(replaced) == len(new)
        orig = dict(zip(short_chats["id"], short_chats["doc_id"]))
        assert [orig[s[0]] for s in new["seed_ids"]] == new["doc_id"].to_list()
        assert [row_prompt(r) for r in new.to_dicts()] == [
            row_prompt(r) for r in short_chats.filter(pl.col("id").is_in(new["seed_ids"].list.first())).to_dicts()]
    else:
        assert len(kept) == len(short_chats) + len(new) and kept.head(len(short_chats))["id"].equals(short_chats["id"])

    # a rerun in the same run folder is free and identical: every reply comes from the run's cache
    before = teacher_server.metrics()
    ctx = ctx_for(teacher_server.config(), tmp_path)
    again = synthesize(short_chats, opts, ctx)
    assert teacher_server.metrics()["http_chat_requests"] == before["http_chat_requests"]
    assert ctx.stats["teacher"].get("sent", 0) == 0 and ctx.stats["teacher"]["cache_hits"] > 0
    assert kept.equals(again[0]) and rejected.equals(again[1])


# ------------------------------------------------------------------------------ fake server


def test_failed_calls_are_rejections_and_rows_stay_aligned(fake_teacher, short_chats, tmp_path):
    doomed = set(short_chats["id"][[1, 4, 7]])
    doomed_prompts = {row_prompt(r) for r in short_chats.filter(pl.col("id").is_in(doomed)).to_dicts()}
    fake_teacher.rule = lambda body: "500" if body["messages"][-1]["content"] in doomed_prompts else "ok"
    ctx = ctx_for(fake_teacher.config(max_retries=1), tmp_path)
    kept, rejected = synthesize(short_chats, SynthesizeOptions(generator="respond", n=100), ctx)
    new = check_bookkeeping(short_chats, kept, rejected, ctx, "respond")
    failed = rejected.filter(pl.col("reason").str.starts_with("teacher call failed"))
    assert set(failed["seed_ids"].list.first()) == doomed and all("HTTP 500" in r for r in failed["reason"])
    # the originals of failed rows stay kept; every other one is replaced
    assert set(kept.filter(pl.col("source") == "sharegpt")["id"]) == doomed
    # each answer belongs to its own prompt (the fake echoes the prompt)
    for m in new["messages"]:
        assert m[-1]["content"] == f"answer 0 to: {m[-2]['content'][:60]}"
    assert ctx.stats["rejected_new_by_reason"] == {"teacher call failed": 3}


def test_server_killed_mid_step_then_rerun(fake_teacher, short_chats, tmp_path):
    fake_teacher.rule = lambda body: "sleep:0.05"
    config = fake_teacher.config(max_concurrency=2, max_retries=0, timeout_s=limits.FAKE_REQUEST_S)
    seen = []

    def killer(items, description, total):
        for i in items:
            seen.append(i)
            if len(seen) == 5:
                fake_teacher.stop()
            yield i

    opts = SynthesizeOptions(generator="respond", n=100)
    kept1, rej1 = synthesize(short_chats, opts, ctx_for(config, tmp_path, killer))
    assert len(kept1) + len(rej1) == 2 * len(short_chats)
    assert rej1["reason"].str.starts_with("teacher call failed").sum() >= 1
    fake_teacher.start()
    ctx = ctx_for(config, tmp_path)
    kept2, rej2 = synthesize(short_chats, opts, ctx)
    assert len(kept2) == len(short_chats) and (kept2["source"] == "synthetic:respond").all()
    assert len(rej2) == len(short_chats) and rej2["reason"].str.starts_with("replaced by").all()
    assert max(fake_teacher.served.values()) == 1  # no row's call answered twice
    assert ctx.stats["teacher"]["cache_hits"] == len(fake_teacher.served) - ctx.stats["teacher"]["sent"]


def test_self_instruct_rejects_copies_of_the_pool(fake_teacher, short_chats, tmp_path):
    pool = [row_prompt(r) for r in short_chats.to_dicts()]
    long_one = max(pool, key=lambda p: len(p.split()))
    words = long_one.split()
    near = " ".join(words[:-1] + ["zebras"])
    novel = "Describe how tides would behave on a planet with two moons"

    def reply(body, i):
        if "response_format" in body:
            return json.dumps({"instructions": [long_one.upper(), near, novel]})
        return "an answer"

    fake_teacher.reply = reply
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    kept, rejected = synthesize(short_chats, SynthesizeOptions(generator="self_instruct", n=3, per_call=3), ctx)
    new = kept.filter(pl.col("source") == "synthetic:self_instruct")
    assert [m[0]["content"] for m in new["messages"]] == [novel]
    reasons = sorted(rejected["reason"])
    assert reasons[0].startswith("duplicate prompt: same as ") and reasons[1].startswith("too similar: ROUGE-L")
    assert ctx.stats["attempted"] == 3 and len(kept) + len(rejected) == len(short_chats) + 3


def test_unparsable_teacher_reply(fake_teacher, short_chats, tmp_path):
    fake_teacher.reply = lambda body, i: "Sure! Here are some inputs: 1. foo" if "response_format" in body else "ok"
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    # a schema'd list holds cases of one kind: one kind, so two calls for five cases
    kept, rejected = synthesize(short_chats, SynthesizeOptions(generator="edge_cases", n=5, per_call=3,
                                                               kinds=["ambiguous"]), ctx)
    assert len(kept) == len(short_chats) and len(rejected) == 5
    assert rejected["reason"].str.starts_with("unusable teacher reply: teacher reply is not valid JSON").all()
    assert ctx.stats["teacher"]["sent"] == 2  # two calls for five prompts; nothing to answer


def test_estimate_counts():
    df = pl.DataFrame({"id": ["a", "b"], "text": ["", ""], "source": ["s", "s"],
                       "messages": [[{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "yo"}],
                                    [{"role": "user", "content": "what is up"}]]})
    assert estimate(df, SynthesizeOptions(generator="respond", n=5))["requests"] == 2
    assert estimate(df, SynthesizeOptions(generator="evolve", n=5))["requests"] == 10
    e = estimate(df, SynthesizeOptions(generator="edge_cases", n=7, per_call=3, max_tokens=100, kinds=["ambiguous"]))
    assert e["requests"] == 3 + 7 and e["max_tokens"] > 7 * 100
    # lists are of one kind: 7 cases over the 7 default kinds are 4 writer calls (typos, long_input and
    # prompt_injection are rule-built: no writer call) and 7 answers; each retry may add one a written case
    assert estimate(df, SynthesizeOptions(generator="edge_cases", n=7, per_call=3))["requests"] == 4 + 7
    assert estimate(df, SynthesizeOptions(generator="edge_cases", n=7, per_call=1, retries=2))["requests"] == 4 * 3 + 7
    # rule-built kinds answered by their seed rows: no call at all
    seeded = SynthesizeOptions(generator="edge_cases", n=6, kinds=["typos", "long_input"], answer_from="seed")
    assert estimate(df, seeded) == {"requests": 0, "max_tokens": 0}
    assert estimate(df, SynthesizeOptions(generator="edge_cases", n=6, kinds=["typos", "ambiguous"],
                                          answer_from="seed"))["requests"] == 1 + 3  # one list call, 3 answers
    # more tokens allowed per answer, or more candidates, a larger bound
    bigger = estimate(df, SynthesizeOptions(generator="edge_cases", n=7, per_call=3, max_tokens=200, kinds=["ambiguous"]))
    assert bigger["max_tokens"] > e["max_tokens"]
    more = estimate(df, SynthesizeOptions(generator="edge_cases", n=7, per_call=3, max_tokens=100, kinds=["ambiguous"],
                                          candidates=4, answer_candidates=3))
    assert more["requests"] == e["requests"] and more["max_tokens"] > e["max_tokens"]


def test_unknown_teacher_is_a_clear_error(short_chats, tmp_path):
    with pytest.raises(ValueError, match="teacher 'judge' is not defined"):
        synthesize(short_chats, SynthesizeOptions(teacher="judge"), StepContext(run_dir=tmp_path))
