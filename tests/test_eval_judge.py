"""The judge's swap logic: position bias must come out as ties, consistent preferences as wins."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from evaluation.judge import (combine, fill, load_prompt, pairwise_outcomes, render_question, teacher_ask,
                              teacher_grade, win_rate, win_scores)

QUESTIONS = ["what is 2+2?", "name a colour", "capital of france?", "say hi"]
GOOD = ["4", "blue", "paris", "hi"]
BAD = ["5", "seven", "london", "bye"]


def always_first(items):
    return ["A"] * len(items)


def prefers_good(items):
    return ["A" if a in GOOD else "B" if b in GOOD else "tie" for _q, a, b in items]


def test_judge_that_always_prefers_position_a_gives_all_ties():
    outcomes = pairwise_outcomes(QUESTIONS, GOOD, BAD, always_first)
    assert outcomes == ["tie"] * 4
    assert win_rate(outcomes) == {"win_rate": 0.5, "wins": 0, "ties": 4, "losses": 0, "failed": 0}


def test_both_orders_are_asked_with_answers_swapped():
    seen = []

    def record(items):
        seen.extend(items)
        return always_first(items)

    pairwise_outcomes(QUESTIONS[:2], GOOD[:2], BAD[:2], record)
    assert seen == [(QUESTIONS[0], "4", "5"), (QUESTIONS[1], "blue", "seven"),
                    (QUESTIONS[0], "5", "4"), (QUESTIONS[1], "seven", "blue")]


def test_consistent_judge_gives_wins_and_losses():
    a = [GOOD[0], BAD[1], GOOD[2], BAD[3]]
    b = [BAD[0], GOOD[1], BAD[2], GOOD[3]]
    outcomes = pairwise_outcomes(QUESTIONS, a, b, prefers_good)
    assert outcomes == ["a", "b", "a", "b"]
    assert win_rate(outcomes)["win_rate"] == 0.5
    assert win_rate(pairwise_outcomes(QUESTIONS, GOOD, BAD, prefers_good))["win_rate"] == 1.0


def test_combine_rules():
    assert combine("A", "B") == "a" and combine("B", "A") == "b"
    assert combine("A", "A") == "tie" and combine("B", "B") == "tie"
    assert combine("tie", "B") == "tie" and combine("A", "tie") == "tie"
    assert combine(None, "A") is None


def test_failed_calls_are_excluded_not_counted_as_ties():
    s = win_scores(["a", None, "tie", "b"])
    assert s[0] == 1.0 and np.isnan(s[1]) and s[2] == 0.5 and s[3] == 0.0
    r = win_rate(["a", None, "a", "tie"])
    assert r["win_rate"] == pytest.approx(2.5 / 3) and r["failed"] == 1


def test_prompts_are_files_with_placeholders(tmp_path):
    assert "{answer_a}" in load_prompt("pairwise") and "{answer}" in load_prompt("single")
    bad = tmp_path / "p.txt"
    bad.write_text("compare {question} and {answer_a}")
    with pytest.raises(ValueError, match="answer_b"):
        load_prompt("pairwise", bad)
    # One-pass substitution: braces or placeholder text inside answers stay as written.
    assert fill("Q={question} A={answer_a}", question="{answer_a}", answer_a='{"x": 1}') == \
        'Q={answer_a} A={"x": 1}'


def test_question_keeps_context_of_multi_turn_prompts():
    assert render_question([{"role": "user", "content": "hi"}]) == "hi"
    q = render_question([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "user", "content": "and now?"}])
    assert "assistant: hello" in q and q.endswith("and now?")


def _verdict_reply(winner_for):
    """A fake-server answer function: the verdict comes from the prompt text."""
    def answer(body):
        prompt = body["messages"][-1]["content"]
        a = re.search(r"\[Answer A\]\n(.*?)\n\[End of Answer A\]", prompt, re.S).group(1)
        b = re.search(r"\[Answer B\]\n(.*?)\n\[End of Answer B\]", prompt, re.S).group(1)
        content = json.dumps({"reason": "because", "winner": winner_for(a, b)})
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    return answer


def test_teacher_judge_with_position_bias_gives_ties_and_is_cached(fake_teacher, tmp_path):
    fake_teacher.answer = _verdict_reply(lambda a, b: "A")
    ask = teacher_ask(fake_teacher.config(), cache_path=tmp_path / "cache.sqlite")
    assert pairwise_outcomes(QUESTIONS, GOOD, BAD, ask) == ["tie"] * 4
    assert fake_teacher.chat_requests() == 8  # both orders
    body = fake_teacher.bodies[0]
    assert body["temperature"] == 0.0 and body["response_format"]["type"] == "json_schema"
    # Asked again: every verdict comes from the cache.
    assert pairwise_outcomes(QUESTIONS, GOOD, BAD, ask) == ["tie"] * 4
    assert fake_teacher.chat_requests() == 8


def test_teacher_judge_consistent_preference(fake_teacher, tmp_path):
    fake_teacher.answer = _verdict_reply(lambda a, b: "A" if a in GOOD else "B")
    ask = teacher_ask(fake_teacher.config(), cache_path=tmp_path / "cache.sqlite")
    assert pairwise_outcomes(QUESTIONS, GOOD, BAD, ask) == ["a"] * 4
    assert pairwise_outcomes(QUESTIONS, BAD, GOOD, ask) == ["b"] * 4


def test_teacher_grades(fake_teacher, tmp_path):
    grade = teacher_grade(fake_teacher.config(), cache_path=tmp_path / "cache.sqlite")
    scores = grade([(q, a) for q, a in zip(QUESTIONS, GOOD, strict=True)])
    # The fake server answers any schema with a valid instance: integers within 1..10.
    assert len(scores) == 4 and all(isinstance(s, int) and 1 <= s <= 10 for s in scores)
