"""The `preference_pairs` step: preference pairs from judged candidates (synthesis/pairs.py, docs/preference-pairs.md).

The frames are built by hand as the steps before it leave them (synthesize's `candidate_of`, the judge's
`judge_score`), with answers a support assistant could give; one recipe runs the whole chain
(synthesize respond, judge, preference_pairs) against the fake teacher."""
from __future__ import annotations

import json
import re

import polars as pl
import pytest

from curation.errors import ConfigError
from curation.records import MESSAGES, render_text
from curation.step import StepContext
from pond.recipe import parse_recipe
from pond.runner import Runner
from pond.steps import STEPS
from synthesis.pairs import PAIR_COLUMNS, PreferencePairsOptions, preference_pairs

CANCEL = "I need to cancel my order but I can't find the order number anywhere. What do I do?"
BEST = ("You can still cancel it. Sign in, open Orders from the account menu, and your most recent order is at the "
        "top with a Cancel button. If you checked out as a guest, reply with the email you used and roughly when "
        "you ordered, and support will find it for you.")
MIDDLE = ("Look for the confirmation email we sent when you ordered: the order number is in its subject line. "
          "Once you have it, the cancellation form on the help page takes it.")
WORST = "Order numbers are required to cancel orders. Please provide your order number."
ROAST = "How long do I roast mixed vegetables, and at what temperature?"
ROAST_A = "Preheat the oven to 200°C and roast the vegetables for 25 minutes, turning them once halfway."
ROAST_B = "Preheat the oven to 200°C and roast the vegetables for 25 minutes, turning them once."
REFUND = "Is a refund possible if the parcel arrived damaged?"
REFUND_A = ("Yes. Photograph the damage and the packaging, then open a claim under Orders > Report a problem "
            "within 14 days; the refund goes back to your original payment method.")
REFUND_B = "Damaged parcels can usually be refunded, contact us."
SYSTEM = {"role": "system", "content": "You are the support assistant of an online shop."}


def _chat(prompt: str, answer: str, system: bool = False) -> list[dict]:
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return [SYSTEM, *turns] if system else turns


def _frame(rows: list[tuple]) -> pl.DataFrame:
    """(id, prompt, answer, source, candidate_of, judge_score) -> records as synthesize and judge leave them."""
    msgs = [_chat(p, a, system=True) for _, p, a, *_ in rows]
    return pl.DataFrame({"id": [r[0] for r in rows], "messages": msgs, "text": [render_text(m) for m in msgs],
                         "source": [r[3] for r in rows], "candidate_of": [r[4] for r in rows],
                         "judge_score": [r[5] for r in rows]},
                        schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8,
                                "candidate_of": pl.Utf8, "judge_score": pl.Int64})


SYN = "synthetic:edge_cases"
ROWS = [("real-1", "Where is my parcel?", "Open Orders and follow the tracking link.", "shop.jsonl", None, 8),
        ("syn-a1", CANCEL, MIDDLE, SYN, "03-synthesize:0", 6),
        ("syn-a2", CANCEL, WORST, SYN, "03-synthesize:0", 2),
        ("syn-a3", CANCEL, BEST, SYN, "03-synthesize:0", 9),
        ("syn-b1", REFUND, REFUND_B, SYN, "03-synthesize:1", 6),
        ("syn-b2", REFUND, REFUND_A, SYN, "03-synthesize:1", 7),
        ("syn-c1", ROAST, ROAST_A, SYN, "03-synthesize:2", 8),
        ("syn-c2", ROAST, ROAST_B, SYN, "03-synthesize:2", 5),
        ("syn-d1", "Can I change the delivery address after I ordered?", "Yes, until it ships: Orders > Edit.",
         SYN, "03-synthesize:3", 7)]


def _run(df: pl.DataFrame, **options) -> tuple[pl.DataFrame, pl.DataFrame, StepContext]:
    ctx = StepContext()
    kept, rejected = preference_pairs(df, PreferencePairsOptions(**options), ctx)
    assert len(kept) + len(rejected) == len(df)  # rows conserved
    assert set(kept["id"]) | set(rejected["id"]) == set(df["id"])
    return kept, rejected, ctx


def _reasons(rejected: pl.DataFrame) -> dict[str, str]:
    return dict(zip(rejected["id"], rejected["reason"]))


def test_the_best_and_the_worst_answer_of_a_case_make_one_pair():
    df = _frame(ROWS)
    kept, rejected, ctx = _run(df)
    pair = kept.filter(pl.col("chosen").is_not_null()).to_dicts()
    assert [p["id"] for p in pair] == ["syn-a3", "syn-b2"]  # the cancel case's 9; refund's margin 1 is enough
    p = pair[0]
    assert p["prompt"] == [SYSTEM, {"role": "user", "content": CANCEL}]  # the whole context, system included
    assert p["chosen"] == [{"role": "assistant", "content": BEST}]
    assert p["rejected"] == [{"role": "assistant", "content": WORST}]
    assert (p["score_chosen"], p["score_rejected"], p["margin"], p["rejected_id"]) == (9.0, 2.0, 7.0, "syn-a2")
    assert p["messages"] == p["prompt"] + p["chosen"]  # still the chosen conversation: a valid record
    reasons = _reasons(rejected)
    assert reasons["syn-a2"] == ("rejected answer of a pair: the worse side of syn-a3, judge_score 2 vs 9 "
                                 "(case 03-synthesize:0)")
    assert reasons["syn-a1"].startswith("not the best or worst of its case: judge_score 6, between 2 and 9")
    # rows of no case, and a case of one answer, pass through without a pair
    unpaired = kept.filter(pl.col("chosen").is_null())
    assert {"real-1", "syn-d1"} <= set(unpaired["id"])
    assert unpaired.select(list(PAIR_COLUMNS)).null_count().row(0) == (len(unpaired),) * len(PAIR_COLUMNS)
    assert set(df.columns) | set(PAIR_COLUMNS) == set(kept.columns)
    assert (rejected["stage"] == "preference_pairs").all()


def test_a_margin_under_min_margin_rejects_the_whole_case():
    kept, rejected, ctx = _run(_frame(ROWS), min_margin=2)
    reasons = _reasons(rejected)
    assert reasons["syn-b1"] == reasons["syn-b2"] == (
        "margin below min_margin: judge_score 7 of syn-b2 vs 6 of syn-b1, margin 1 < 2 (case 03-synthesize:1)")
    assert "syn-a3" in set(kept["id"])  # margin 7 passes
    tie = _frame([("t1", REFUND, REFUND_A, SYN, "c", 7), ("t2", REFUND, REFUND_B, SYN, "c", 7)])
    kept, rejected, _ = _run(tie)  # a tie is never a preference
    assert kept.is_empty() and rejected["reason"].str.starts_with("margin below min_margin: judge_score 7").all()
    with pytest.raises(ValueError):
        PreferencePairsOptions(min_margin=0)


def test_near_copy_answers_are_no_pair():
    kept, rejected, ctx = _run(_frame(ROWS))
    reasons = _reasons(rejected)
    assert re.fullmatch(r"near-copy pair: ROUGE-L 0\.9\d >= max_similarity 0\.9 between syn-c1 and syn-c2 "
                        r"\(case 03-synthesize:2\)", reasons["syn-c1"])
    assert reasons["syn-c2"] == reasons["syn-c1"]
    assert ctx.stats["rejected_by_reason"] == {"near-copy pair": 2, "not the best or worst of its case": 1,
                                               "rejected answer of a pair": 2}
    assert (ctx.stats["cases"], ctx.stats["pairs"], ctx.stats["unpaired"]) == (3, 2, 2)
    assert ctx.stats["margin"]["count"] == 2 and ctx.stats["margin_histogram"] == {"1": 1, "7": 1}
    # with the ROUGE-L threshold off, the same pair passes; answers equal but for case and punctuation never do
    kept, _, _ = _run(_frame(ROWS), max_similarity=None)
    assert "syn-c1" in set(kept["id"])
    same = _frame([("s1", ROAST, ROAST_A, SYN, "c", 8), ("s2", ROAST, ROAST_A.upper().rstrip("."), SYN, "c", 3)])
    _, rejected, _ = _run(same, max_similarity=None)
    assert rejected["reason"][0] == ("near-copy pair: the same answer up to case, punctuation and spacing between "
                                     "s1 and s2 (case c)")


def test_real_rows_pair_with_the_teachers_answers_to_their_prompt():
    """cases: prompt: a real row and synthesize respond's answers to it share the conversation up to the
    last user turn; the real answer may win or lose."""
    real = _frame([("real-1", CANCEL, WORST, "shop.jsonl", None, 3),
                   ("real-2", REFUND, REFUND_A, "shop.jsonl", None, 9),
                   ("real-3", ROAST, ROAST_A, "shop.jsonl", None, 8)])
    teacher = _frame([("syn-r1", CANCEL, BEST, "synthetic:respond", None, 8),
                      ("syn-r2", REFUND, REFUND_B, "synthetic:respond", None, 4)])
    other_system = teacher.head(1).with_columns(  # the same question under another system prompt: another case
        pl.lit("syn-r3").alias("id"), pl.Series("messages", [_chat(CANCEL, MIDDLE)], dtype=MESSAGES))
    df = pl.concat([real, teacher, other_system])
    kept, rejected, ctx = _run(df, cases="prompt")
    pair = {r["id"]: r for r in kept.filter(pl.col("chosen").is_not_null()).to_dicts()}
    assert set(pair) == {"syn-r1", "real-2"}
    assert pair["syn-r1"]["rejected_id"] == "real-1" and pair["real-2"]["rejected_id"] == "syn-r2"
    assert {"real-3", "syn-r3"} <= set(kept["id"]) and ctx.stats["pairs"] == 2
    assert _reasons(rejected)["real-1"].endswith("(case prompt of real-1)")
    # an unscored row is no candidate (a judge with rows: synthetic left the real rows unscored)
    unscored = df.with_columns(pl.when(pl.col("source") == "shop.jsonl").then(None).otherwise(pl.col("judge_score"))
                               .alias("judge_score"))
    kept, rejected, _ = _run(unscored, cases="prompt")
    assert rejected.is_empty() and kept["chosen"].null_count() == len(kept)


def test_bad_input_says_which_steps_make_the_candidates():
    df = _frame(ROWS)
    with pytest.raises(ConfigError, match=re.escape(
            "preference_pairs: none of the 9 rows has candidate_of and judge_score: add `synthesize: {generator: "
            "edge_cases, answer_candidates: N, judge_picks: true}` and `judge: {min_score: null}` (no best_of) "
            "before it")):
        _run(df.drop("judge_score"))
    with pytest.raises(ConfigError, match="none of the 9 rows has candidate_of and judge_score"):
        _run(df.drop("candidate_of"))
    with pytest.raises(ConfigError, match="none of the 9 rows has candidate_of and quality"):
        _run(df, score_column="quality")
    with pytest.raises(ConfigError, match=re.escape("has a prompt, an answer and judge_score: add `synthesize: "
                                                    "{generator: respond, replace: false}`")):
        _run(df.with_columns(pl.lit(None, pl.Int64).alias("judge_score")), cases="prompt")
    with pytest.raises(ConfigError, match="already have column.s. chosen, rejected"):
        _run(df.with_columns(pl.lit("x").alias("chosen"), pl.lit("y").alias("rejected")))
    for empty in (df.head(0), df.head(0).drop("judge_score", "candidate_of")):  # nothing left to pair: no error
        kept, rejected, _ = _run(empty)
        assert kept.is_empty() and rejected.is_empty() and set(PAIR_COLUMNS) <= set(kept.columns)


def test_every_answer_alone_in_its_case_warns(capsys, tmp_path):
    lone = _frame([r for r in ROWS if r[0] in ("syn-a3", "syn-b2", "syn-c1")])  # what a judge with best_of leaves
    ctx = StepContext(step_dir=tmp_path)  # a warning is said once per step folder
    kept, rejected = preference_pairs(lone, PreferencePairsOptions(), ctx)
    assert rejected.is_empty() and ctx.stats["pairs"] == 0
    said = capsys.readouterr().err
    assert "preference_pairs: 3 judged answers, each alone in its case, so no pair: a judge with best_of" in said


def test_cases_that_all_tie_make_no_pair_and_say_why(capsys, tmp_path):
    tied = _frame([r[:5] + (7,) for r in ROWS if r[0].startswith(("syn-a", "syn-b"))])  # a judge that gives every answer 7
    ctx = StepContext(step_dir=tmp_path)
    kept, rejected = preference_pairs(tied, PreferencePairsOptions(), ctx)
    assert ctx.stats["cases"] == 2 and ctx.stats["pairs"] == 0 and len(rejected) == 5
    said = capsys.readouterr().err
    assert "preference_pairs: 2 cases, no pair: 5 rows margin below min_margin" in said
    # a case that makes a pair says nothing
    preference_pairs(_frame(ROWS), PreferencePairsOptions(), StepContext(step_dir=tmp_path / "other"))
    assert "no pair" not in capsys.readouterr().err


def test_the_pair_columns_are_trls_conversational_preference_format():
    """TRL's DPO data: exactly prompt, chosen and rejected of its keys (`messages` beside them is refused,
    so an export keeps the three), the prompt ending on the user turn."""
    from trl.data_utils import apply_chat_template, is_conversational

    from tests.fixtures_models import build_tiny_tokenizer

    kept, _, _ = _run(_frame(ROWS))
    row = kept.filter(pl.col("id") == "syn-a3").to_dicts()[0]
    example = {k: row[k] for k in ("prompt", "chosen", "rejected")}
    assert is_conversational(example)
    out = apply_chat_template(example, build_tiny_tokenizer())
    assert out["prompt"].endswith("<|im_start|>assistant\n") and "Cancel button" in out["chosen"]
    assert WORST in out["rejected"] and CANCEL in out["prompt"]
    with pytest.raises(KeyError, match="Invalid keys"):
        apply_chat_template({**example, "messages": row["messages"]}, build_tiny_tokenizer())


def test_the_step_table_knows_it_and_it_needs_no_teacher():
    options, fn = STEPS["preference_pairs"].load()
    assert fn is preference_pairs and options().teacher_needed() is None
    spec = STEPS["preference_pairs"]
    assert not spec.distributed and not spec.per_row  # a case needs its other rows
    assert options().score_columns() == ["margin"]


RECIPE = """\
name: pairs-e2e
input: {{path: rows.jsonl}}
steps:
  - synthesize: {{generator: respond, n: 10, replace: false, teacher: writer}}
  - judge: {{min_score: null, calibrate: false, teacher: judge}}
  - preference_pairs: {{cases: prompt, min_margin: 2}}
teachers:
  writer: {{base_url: "{url}", model: fake-writer, backoff_s: 0.01}}
  judge: {{base_url: "{url}", model: fake-judge, backoff_s: 0.01}}
"""


def test_a_recipe_pairs_real_answers_with_the_teachers(fake_teacher, tmp_path, monkeypatch):
    """respond answers every real prompt again, the judge scores both answers, preference_pairs makes the pairs."""
    monkeypatch.setenv("POND_CACHE_DIR", str(tmp_path / "cache"))
    real = [(CANCEL, WORST), (REFUND, REFUND_B), (ROAST, ROAST_A)]
    with open(tmp_path / "rows.jsonl", "w") as f:
        for prompt, answer in real:
            f.write(json.dumps({"messages": _chat(prompt, answer)}) + "\n")
    roast_teacher = "Roast them at 220°C for 20 to 30 minutes; cut everything the same size so it cooks evenly."
    teacher_answer = {CANCEL: BEST, REFUND: REFUND_A, ROAST: roast_teacher}
    scores = {WORST: 2, BEST: 9, REFUND_B: 5, REFUND_A: 6, ROAST_A: 8, roast_teacher: 4}

    def reply(body, i):
        text = body["messages"][-1]["content"]
        if body.get("response_format"):  # the judge: the answer it was shown decides the score
            shown = re.search(r"\[Assistant answer\]\n(.*)\n\nReply in JSON", text, re.S)[1]
            return json.dumps({"reason": "r", "score": scores[shown]})
        return teacher_answer[text]

    fake_teacher.reply = reply
    Runner(parse_recipe(RECIPE.format(url=fake_teacher.base_url), "r.yaml"), tmp_path / "run", tmp_path).curate()
    curated = pl.read_parquet(tmp_path / "run" / "curated.parquet")
    step = tmp_path / "run" / "steps" / "03-preference_pairs"
    stats = json.loads((step / "stats.json").read_text())
    rejected = pl.read_parquet(step / "rejected.parquet")
    pair = curated.filter(pl.col("chosen").is_not_null())
    assert (stats["in"], stats["pairs"]) == (6, 2) and len(curated) + len(rejected) == 6
    assert sorted(pair["margin"].to_list()) == [4.0, 7.0]  # refund's margin 1 < 2
    assert {r[0]["content"] for r in pair["chosen"]} == {BEST, ROAST_A}  # the teacher wins once, the real row once
    assert rejected["reason"].str.starts_with("margin below min_margin").sum() == 2
