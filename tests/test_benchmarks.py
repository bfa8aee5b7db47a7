"""Benchmarks: MT-Bench read from its package, prompt files, turn-by-turn answers, grades and intervals."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from evaluation.benchmark_eval import generate_all, grade_all, pairwise_all, summarise_benchmark
from evaluation.benchmarks import load_benchmark
from evaluation.config import EvaluateConfig


def test_mt_bench_questions_and_references():
    q = load_benchmark("mt_bench")
    assert q.height == 80
    assert q.group_by("category").len()["len"].to_list() == [10] * 8
    assert all(len(t) == 2 for t in q["turns"].to_list())
    with_ref = q.filter(pl.col("references").list.first().is_not_null())
    # MT-Bench's judge uses references for math, reasoning and coding only, and has one for each of those
    assert sorted(with_ref["category"].unique().to_list()) == ["coding", "math", "reasoning"]
    assert with_ref.height == 30
    # the corrected reference set: question 111's triangle has area 3 (the old gpt-4 file says 0)
    ref = q.filter(pl.col("question_id") == "111")["references"][0][0]
    assert "= 3" in ref
    assert load_benchmark("mt_bench", per_category=2).height == 16


def test_prompt_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"prompt": "Say hi."}) + "\n" +
                 json.dumps({"turns": ["Add 2 and 2.", "Now double it."], "category": "math",
                             "reference": ["4", "8"]}) + "\n")
    q = load_benchmark(str(p))
    assert q["turns"].to_list() == [["Say hi."], ["Add 2 and 2.", "Now double it."]]
    assert q["references"].to_list() == [[None], ["4", "8"]]
    assert q["category"].to_list() == ["all", "math"]


@pytest.mark.parametrize("text, message", [
    ("", "the benchmark has no prompts"),
    ("\n\n", "the benchmark has no prompts"),
    ('{"prompt": "ok"}\n{"turns": []}\n', ":2: a question needs `turns`"),
    ('{"prompt": "ok"}\nnot json\n', ":2: not JSON"),
    ('{"turns": ["a", ""]}\n', ":1: every turn must be a non-empty string"),
])
def test_prompt_file_errors_name_the_line(tmp_path, text, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(ValueError) as e:
        load_benchmark(str(p))
    assert str(p) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_benchmark_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_benchmark(str(tmp_path / "nope.jsonl"))


def test_benchmark_needs_a_judge():
    with pytest.raises(ValueError, match="benchmark needs a judge"):
        EvaluateConfig(benchmark="mt_bench")
    EvaluateConfig(benchmark="mt_bench", judge="judge")


def _questions():
    return pl.DataFrame({"question_id": ["1", "2"], "category": ["math", "writing"],
                         "turns": [["2+2?", "times 3?"], ["A poem.", "Shorter."]],
                         "references": [["4", "12"], [None, None]]})


def test_second_turn_carries_the_models_own_first_answer():
    seen = []

    def answer(chats_by_model):
        seen.append(chats_by_model)
        return {m: [f"{m}:{c[-1]['content']}" for c in chats] for m, chats in chats_by_model.items()}

    out = generate_all(_questions(), {"a": None, "b": None}, answer, turns=2)
    assert out.height == 8
    second = seen[1]["b"][0]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == "b:2+2?"  # b's own answer, not a's
    assert out.filter(pl.col("turn") == 1, pl.col("model") == "a")["answer"].to_list() == ["a:times 3?", "a:Shorter."]
    one = generate_all(_questions(), {"a": None}, answer, turns=1)
    assert one["turn"].to_list() == [0, 0]


def test_grades_see_the_reference_and_earlier_turns():
    answers = pl.DataFrame({"model": ["a"] * 4, "question_id": ["1", "2", "1", "2"],
                            "category": ["math", "writing"] * 2, "turn": [0, 0, 1, 1],
                            "answer": ["four", "roses", "twelve", "rose"]})
    asked = []

    def grade(items):
        asked.extend(items)
        return [7, None, 5, 9]

    out = grade_all(_questions(), answers, grade)
    q_math_t1 = asked[2][0]
    assert "reference answer" in q_math_t1 and "12" in q_math_t1 and "four" in q_math_t1 and "times 3?" in q_math_t1
    assert "reference answer" not in asked[1][0]
    g = out["grade"].to_list()
    assert g[0] == 7 and np.isnan(g[1])  # a failed grade is NaN (no weight), never a number


def test_pairwise_both_orders_and_ties():
    answers = pl.DataFrame({"model": ["x", "y"], "question_id": ["1", "1"], "category": ["math"] * 2,
                            "turn": [0, 0], "answer": ["good", "bad"]})
    calls = []

    def ask(items):
        calls.extend(items)
        return ["A" if a == "good" else "B" for _q, a, _b in items]  # consistent: x's answer wins both orders

    out = pairwise_all(_questions().head(1), answers, [("x", "y")], ask)
    assert len(calls) == 2 and calls[0][1] == "good" and calls[1][1] == "bad"
    assert out["score"].to_list() == [1.0]

    out = pairwise_all(_questions().head(1), answers, [("x", "y")], lambda items: ["A"] * len(items))
    assert out["score"].to_list() == [0.5]  # position bias: A in both orders is a tie


def test_summary_intervals_paired_and_per_category():
    rng = np.random.default_rng(0)
    rows = []
    cats = ["math", "writing"]
    for m, shift in (("cur-s0", 1.5), ("cur-s1", 1.5), ("rnd-s0", 0.0), ("rnd-s1", 0.0), ("base", -1.0)):
        for q in range(40):
            for t in (0, 1):
                hardness = q % 5  # shared between models: the pairing removes it
                rows.append({"model": m, "question_id": str(q), "category": cats[q % 2], "turn": t,
                             "answer": "x", "grade": float(np.clip(2 + hardness + shift + rng.normal(0, 0.3), 1, 10))})
    answers = pl.DataFrame(rows)
    groups = {"base": ["base"], "cur": ["cur-s0", "cur-s1"], "rnd": ["rnd-s0", "rnd-s1"]}
    pw = pl.DataFrame([{"model": f"cur-s{s}", "against": f"rnd-s{s}", "question_id": str(q), "category": cats[q % 2],
                        "turn": t, "score": 1.0 if (q + t) % 4 else 0.5} for s in (0, 1) for q in range(40) for t in (0, 1)])
    b = summarise_benchmark(answers, pw, groups, "rnd", resamples=500)
    cur = b["groups"]["cur"]
    assert b["items"] == 80 and b["questions"] == 40
    d = cur["minus"]["rnd"]
    assert 1.2 < d["mean"] < 1.8 and d["low"] > 0
    assert set(cur["by_category"]) == {"math", "writing"}
    assert cur["minus_by_category"]["math"]["low"] > 0
    assert 0.8 < cur["win_rate"]["mean"] < 0.95 and cur["pairs"]["ties"] == 40
    assert "win_rate" not in b["groups"]["rnd"]  # the baseline is not compared with itself
    # equal arms: the paired interval straddles zero
    same = answers.with_columns(pl.when(pl.col("model").str.starts_with("cur"))
                                .then(pl.col("grade") - 1.5).otherwise(pl.col("grade")).alias("grade"))
    d0 = summarise_benchmark(same, None, groups, "rnd", resamples=500)["groups"]["cur"]["minus"]["rnd"]
    assert d0["low"] < 0 < d0["high"]
