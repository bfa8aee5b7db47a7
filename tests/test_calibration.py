"""Judge calibration: the set built from real rows, the per-corruption figures, and the refusal of a
judge that cannot tell (a fake that grades everything 8, and the real SmolLM2-135M on vLLM)."""
from __future__ import annotations

import json
import re

import polars as pl
import pytest

from synthesis import calibration
from synthesis.calibration import CORRUPTIONS, POSITIVE, CalibrationFailed, build
from synthesis.judge import JudgeOptions, estimate, judge
from synthesis.rows import clip, row_answer, row_prompt
from tests.test_judge import ctx_for


@pytest.fixture(scope="module")
def pool(sharegpt_df) -> pl.DataFrame:
    return sharegpt_df.head(120)


def test_the_set_holds_each_row_and_its_corruptions(pool):
    items = build(pool, rows=6, seed=0)
    kinds = [it.kind for it in items]
    assert kinds.count(POSITIVE) == 6
    for kind in CORRUPTIONS[:4] + ("fluent_nonsense",):
        assert kinds.count(kind) == 6, kind
    assert build(pool, rows=6, seed=0) == items  # seeded
    by_kind = {}
    for it in items:
        by_kind.setdefault(it.kind, []).append(it)
    for pos, cut, other, shuffled, repeat, nonsense in zip(*(by_kind[k] for k in (
            POSITIVE, "cut_mid_sentence", "answer_from_another_row", "shuffled_prompt", "repeats_prompt",
            "fluent_nonsense"))):
        assert pos.answer.startswith(cut.answer) and len(cut.answer) < len(pos.answer)
        assert not re.search(r"[.!?:]$", cut.answer)  # cut inside a sentence
        assert other.prompt == pos.prompt and other.answer != pos.answer
        assert sorted(shuffled.prompt.split()) == sorted(pos.prompt.split()) and shuffled.prompt != pos.prompt
        assert repeat.answer == pos.prompt
        assert nonsense.answer != pos.answer and nonsense.prompt == pos.prompt
    for it in by_kind.get("other_language", []):  # ShareGPT holds answers in other languages
        from curation.answer_faults import language

        assert language(it.answer) != language(it.prompt)


def test_too_few_rows_is_one_line_with_the_count_needed(pool):
    with pytest.raises(CalibrationFailed, match=r"needs 16 real rows .* has 3"):
        build(pool.head(3), rows=8)


def _fake_judge(fake_teacher, pool, good: bool):
    """A fake judge: `good` scores the real (prompt, answer) pairs 9 and anything else 2; the bad one
    grades everything 8, as the 1.5B judge of the last experiment nearly did."""
    real = {(clip(row_prompt(r), 10**6), clip(row_answer(r), 10**6)) for r in pool.select("messages", "text").to_dicts()}

    def reply(body, i):
        text = body["messages"][0]["content"]
        user = text.split("[User message]\n", 1)[1].split("\n\n[Assistant answer]\n", 1)
        answer = user[1].rsplit("\n\nReply in JSON", 1)[0]
        score = 9 if (user[0], answer) in real else 2
        return json.dumps({"reason": "r", "score": score if good else 8})

    fake_teacher.reply = reply


def test_a_judge_that_can_tell_passes_and_its_figures_are_kept(fake_teacher, pool, tmp_path):
    _fake_judge(fake_teacher, pool, good=True)
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    ctx.step_dir = tmp_path / "step"
    ctx.step_dir.mkdir()
    opts = JudgeOptions(min_score=5, calibration_rows=4, max_input_chars=10**6)  # unclipped: the fake compares whole texts
    kept, rejected = judge(pool.head(30), opts, ctx)
    figures = ctx.stats["calibration"]
    assert figures["positives"] == 4 and figures["worst_auc"] == 1.0 and figures["positives_kept"] == 1.0
    assert all(v["rejected"] == 1.0 for v in figures["by_corruption"].values() if v["negatives"])
    saved = pl.read_parquet(ctx.step_dir / "calibration.parquet")
    assert saved.height == sum(v["negatives"] for v in figures["by_corruption"].values()) + 4
    assert len(kept) + len(rejected) == 30
    # the estimate counts the calibration calls beside the rows' own
    assert estimate(pool.head(30), opts)["requests"] == 30 + saved.height


def test_a_judge_that_grades_everything_8_is_refused_in_one_line(fake_teacher, pool, tmp_path):
    _fake_judge(fake_teacher, pool, good=False)
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    with pytest.raises(CalibrationFailed) as err:
        judge(pool.head(30), JudgeOptions(min_score=5, calibration_rows=4), ctx)
    message = str(err.value)
    assert "\n" not in message and "AUC 0.5" in message and "min_calibration 0.75" in message
    assert "bigger judge" in message
    assert ctx.stats["calibration"]["worst_auc"] == 0.5


def test_fail_fast_stops_at_the_first_failing_type_with_the_same_verdict(fake_teacher, pool, tmp_path):
    """calibration_fail_fast: the everything-8 judge is refused after the positives and the first corruption
    type (a third of the calls), saying which types it did not grade; a judge that can tell grades every type
    and gets the same figures as without it."""
    _fake_judge(fake_teacher, pool, good=False)
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    sent = len(fake_teacher.bodies)
    with pytest.raises(CalibrationFailed) as err:
        judge(pool.head(30), JudgeOptions(min_score=5, calibration_rows=4, calibration_fail_fast=True), ctx)
    assert len(fake_teacher.bodies) - sent == 4 + 4  # the positives and answer_from_another_row
    figures = ctx.stats["calibration"]
    assert figures["worst"] == CORRUPTIONS[0] and figures["worst_auc"] == 0.5
    always = ["cut_mid_sentence", "shuffled_prompt", "repeats_prompt", "fluent_nonsense"]  # other_language: if any
    assert [k for k in figures["not_graded"] if k != "other_language"] == always
    assert all(figures["by_corruption"][k]["auc"] is None for k in figures["not_graded"])
    assert "not graded after the first failure: cut_mid_sentence" in str(err.value)
    # a refused judge passed over sends that first round alone: what `--estimate` gives as the fewest requests
    opts = JudgeOptions(min_score=5, calibration_rows=4, calibration_fail_fast=True, on_failed_calibration="pass")
    counted = estimate(pool.head(30), opts)
    sent = len(fake_teacher.bodies)
    judge(pool.head(30), opts, ctx_for(fake_teacher.config(), tmp_path / "pass"))
    assert len(fake_teacher.bodies) - sent == counted["fewest"] == 8 < counted["requests"]

    _fake_judge(fake_teacher, pool, good=True)
    full = {}
    for fail_fast in (False, True):
        c = ctx_for(fake_teacher.config(), tmp_path / str(fail_fast))
        judge(pool.head(30), JudgeOptions(min_score=5, calibration_rows=4, max_input_chars=10**6,
                                          calibration_fail_fast=fail_fast), c)
        full[fail_fast] = c.stats["calibration"]
    assert full[True] == full[False] and "not_graded" not in full[True] and full[True]["worst_auc"] == 1.0


def test_rounds_put_the_positives_first_and_cover_every_item(pool):
    items = build(pool, rows=4, seed=0)
    assert calibration.rounds(items, fail_fast=False) == [list(range(len(items)))]
    rounds = calibration.rounds(items, fail_fast=True)
    assert sorted(i for r in rounds for i in r) == list(range(len(items)))
    assert [items[i].kind for i in rounds[0]] == [POSITIVE] * 4 + [CORRUPTIONS[0]] * 4
    assert all(len({items[i].kind for i in r}) == 1 for r in rounds[1:])


def test_summary_counts_unreadable_replies_and_thresholds():
    items = [calibration.Item("p", "a", POSITIVE), calibration.Item("p", "b", POSITIVE),
             calibration.Item("p", "x", "repeats_prompt"), calibration.Item("p", "y", "repeats_prompt")]
    summary = calibration.summarise(items, [9, None, 3, 8], min_score=5)
    assert summary["unreadable"] == 1 and summary["positives"] == 1
    assert summary["by_corruption"]["repeats_prompt"] == {"negatives": 2, "auc": 1.0, "mean": 5.5, "rejected": 0.5}
    assert summary["by_corruption"]["cut_mid_sentence"]["auc"] is None


@pytest.mark.slow  # ~14 s native, ~28 s in float32; the refusal itself is tested above with fake judges
@pytest.mark.teacher
def test_smollm2_cannot_judge_and_is_refused(teacher_server, pool, tmp_path):
    """The real vLLM SmolLM2-135M as a judge: calibration measures it and refuses it."""
    ctx = ctx_for(teacher_server.config(), tmp_path)
    with pytest.raises(CalibrationFailed, match="failed calibration"):
        judge(pool.head(40), JudgeOptions(min_score=5, calibration_rows=4, max_reason_chars=32), ctx)
    assert ctx.stats["calibration"]["worst_auc"] < 0.75


def test_a_refused_judge_can_be_passed_over_and_says_so(fake_teacher, pool, tmp_path):
    """on_failed_calibration: pass: nothing is judged, every row passes (of a best_of case, the first),
    and stats.json says the judge was refused."""
    _fake_judge(fake_teacher, pool, good=False)
    ctx = ctx_for(fake_teacher.config(), tmp_path)
    df = pool.head(30).with_columns(pl.Series("candidate_of", [None] * 27 + ["c1", "c1", "c2"]))
    opts = JudgeOptions(min_score=5, calibration_rows=4, on_failed_calibration="pass", best_of="candidate_of")
    sent = len(fake_teacher.bodies)
    kept, rejected = judge(df, opts, ctx)
    assert len(kept) == 29 and rejected["reason"].to_list() == [
        "judge refused by calibration: not the first candidate of its case"]
    assert "failed calibration" in ctx.stats["refused"] and ctx.stats["judged"] == 0
    assert len(fake_teacher.bodies) - sent == ctx.stats["calibration"]["positives"] + sum(
        v["negatives"] for v in ctx.stats["calibration"]["by_corruption"].values())  # calibration only
    with pytest.raises(CalibrationFailed, match="needs 8 real rows"):  # too few rows is never passed over
        judge(df.head(5), opts, ctx)


def test_the_run_summary_states_the_calibration():
    from pond.pipeline import _calibration_lines

    cal = {"judge": "q", "rubric": "helpfulness", "min_calibration": 0.75, "worst_auc": 0.5,
           "worst": "shuffled_prompt", "positives": 8}
    [refused] = _calibration_lines([{"calibration": cal, "refused": "...", "options": {"self_judge": True}}])
    assert "REFUSED, rows passed unjudged" in refused and "worst AUC 0.5 on shuffled_prompt" in refused
    assert "self-judging" in refused
    [passed] = _calibration_lines([{"calibration": cal | {"worst_auc": 0.9}, "options": {}}, {"kind": "pii"}])
    assert "passed" in passed and "self-judging" not in passed
