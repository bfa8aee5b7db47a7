"""`pond run --estimate` and the plan line: every request counted, a time per stage, nothing written."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import polars as pl
import pytest

from pond import costs
from pond.estimate import estimate, estimate_run, plan_line, plan_seconds
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe

CURATION = """\
name: est
input: {path: rows.jsonl}
seed: 0
steps:
  - holdout: {n: 3}
  - exact_dedup: {}
"""

TEACHER = """\
name: est
input: {{path: rows.jsonl}}
seed: 0
steps:
  - synthesize: {{generator: edge_cases, n: 4, per_call: 1, answer_candidates: {candidates}, judge_picks: true,
                 teacher: writer}}
  - judge: {{rubric: helpfulness, min_score: 5, teacher: judge, rows: synthetic, best_of: candidate_of}}
teachers:
  writer: {{model: smollm2-135m-instruct, serve: {{port: 8000}}}}
  judge: {{model: qwen2.5-coder-1.5b-instruct, serve: {{model: qwen2.5-coder-1.5b-instruct, port: 8001}}}}
train: {{student: smollm2-135m-instruct, max_steps: 5, batch_size: 2, max_seq_len: 128}}
evaluate: {{heldout: "run:heldout.parquet", n_generate: 0}}
experiment: {{arms: [{{name: a, data: curated}}, {{name: b, data: random_n}}], baseline: b, steps: 3, seeds: [0]}}
"""


@pytest.fixture()
def workdir(tmp_path, short_chats, monkeypatch):
    monkeypatch.setenv("POND_CACHE_DIR", str(tmp_path / "cache"))
    with open(tmp_path / "rows.jsonl", "w") as f:
        for m in short_chats["messages"].to_list():
            f.write(json.dumps({"messages": m}) + "\n")
    return tmp_path


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_estimate_writes_nothing(workdir):
    recipe = parse_recipe(CURATION, "r.yaml")
    out = workdir / "run"
    estimate_run(recipe, out, workdir, print_fn=lambda m: None)
    assert not out.exists()  # not even steps/00-ingest or DONE
    run_pipeline(recipe, out, workdir)
    before = _tree(out)
    lines: list[str] = []
    estimate_run(recipe, out, workdir, print_fn=lines.append)
    assert _tree(out) == before
    assert any(line.strip().startswith("curation") for line in lines), lines


def test_cli_estimate_writes_nothing(workdir):
    from typer.testing import CliRunner

    from pond.cli import app

    (workdir / "r.yaml").write_text(CURATION)
    result = CliRunner().invoke(app, ["run", str(workdir / "r.yaml"), "--out", str(workdir / "run"), "--estimate"])
    assert result.exit_code == 0, result.output
    assert "total: 0 requests" in result.output
    assert not (workdir / "run").exists()


def test_every_answer_candidate_is_a_judge_request(workdir):
    """judge_picks writes up to answer_candidates rows per case, and the judge scores each."""
    def judge_requests(candidates: int) -> int:
        est = estimate(parse_recipe(TEACHER.format(candidates=candidates), "r.yaml"), None, workdir)
        line = next(x for x in est.lines if x.startswith("02-judge"))
        return int(re.match(r"02-judge: (\d+) requests", line).group(1))

    one, three = judge_requests(1), judge_requests(3)
    assert three - one == 4 * (3 - 1)  # n cases x the extra candidates
    assert three >= 4 * 3


def test_a_time_for_every_stage(workdir, monkeypatch):
    monkeypatch.setattr(costs, "machine_costs", lambda: costs.CPU_FP32)
    est = estimate(parse_recipe(TEACHER.format(candidates=3), "r.yaml"), None, workdir)
    assert set(est.seconds) == {"curation", "teacher", "training", "evaluation", "experiment"}
    assert all(v > 0 for v in est.seconds.values())
    # the writer and the judge are served here: each start is counted once
    starts = costs.CPU_FP32.serve_start_s["small"] + costs.CPU_FP32.serve_start_s["large"]
    assert est.seconds["teacher"] > starts
    # 2 arms x 1 seed: each loads the student and trains 3 steps at 2 x 128 tokens (a quarter of the measured
    # step), then is scored on the held-out rows (no held-out draw in the recipe: the reference size, 60) cut at 128
    c = costs.CPU_FP32
    arms = 2 * (c.train_load_s + 3 * c.step_s("qlora") / 4) + 2 * 60 * (128 / 256) * c.score_row_s
    assert est.seconds["experiment"] == pytest.approx(arms)
    # the evaluation scores the base model and the adapter on the same rows
    assert est.seconds["evaluation"] == pytest.approx(2 * 60 * (128 / 256) * c.score_row_s)
    line = plan_line(parse_recipe(TEACHER.format(candidates=3), "r.yaml"), est)
    assert re.search(r"about [\d.]+ (s|min) on this machine \(curation .*experiment", line), line


def test_the_experiments_instruments_are_timed(workdir, monkeypatch):
    """Reference loss for every model and benchmark answers of the answering seeds are in the experiment's time."""
    monkeypatch.setattr(costs, "machine_costs", lambda: costs.CPU_FP32)
    plain = estimate(parse_recipe(TEACHER.format(candidates=1), "r.yaml"), None, workdir)
    text = TEACHER.format(candidates=1).replace(
        'evaluate: {heldout: "run:heldout.parquet", n_generate: 0}',
        'evaluate: {heldout: "run:heldout.parquet", n_generate: 0, reference: alpaca_eval, reference_rows: 10, '
        'reference_max_seq_len: 256, benchmark: ifeval, benchmark_sample: 20, max_new_tokens: 64}')
    est = estimate(parse_recipe(text, "r.yaml"), None, workdir)
    c = costs.CPU_FP32
    models = 2 * 1 + 1  # arms x seeds, and the base model
    extra = models * 10 * c.score_row_s + models * (c.generation_start_s + 20 * 64 / c.generate_tok_s)
    assert est.seconds["experiment"] - plain.seconds["experiment"] == pytest.approx(extra)
    assert "scoring and benchmark answers" in est.notes["experiment"]
    # the evaluation does the same for the base model and the adapter
    both = 2 * 10 * c.score_row_s + 2 * (c.generation_start_s + 20 * 64 / c.generate_tok_s)
    assert est.seconds["evaluation"] - plain.seconds["evaluation"] == pytest.approx(both)


JUDGED = """\
name: est
input: {{path: rows.jsonl}}
seed: 0
steps:
  - holdout: {{n: 3}}
  - exact_dedup: {{}}
  - judge: {{rubric: helpfulness, min_score: 5, teacher: judge, calibration_rows: 3, calibration_fail_fast: {fail_fast},
            on_failed_calibration: {on_failed}}}
teachers:
  judge: {{model: qwen2.5-coder-1.5b-instruct, serve: {{model: qwen2.5-coder-1.5b-instruct, port: 8001}}}}
"""


def test_a_judge_refused_early_makes_the_time_a_range(workdir, monkeypatch):
    """With calibration graded a round at a time and a refused judge passed over, the teacher stage takes
    between the first calibration round alone and every request; otherwise every request is counted."""
    from pond.estimate import input_rows, stage_lines
    from synthesis import calibration
    from synthesis.judge import calibration_items

    monkeypatch.setattr(costs, "machine_costs", lambda: costs.CPU_FP32)
    recipe = parse_recipe(JUDGED.format(fail_fast="true", on_failed="pass"), "r.yaml")
    est = estimate(recipe, None, workdir, train=False)
    # the calibration set is built from the rows entering curation, as the estimate counts them
    items = calibration_items(input_rows(recipe, None, workdir), recipe.steps[-1].options, None)
    first_round = len(calibration.rounds(items, True)[0])
    assert 0 < est.fewest_requests == first_round < len(items) <= est.requests
    per_request = costs.by_size(costs.CPU_FP32.request_s, 1.5e9)
    assert est.seconds["teacher"] - est.fewest_seconds["teacher"] == pytest.approx(
        (est.requests - first_round) * per_request)
    teacher_line = next(x for x in stage_lines(est) if x.strip().startswith("teacher"))
    assert f"{first_round} to {est.requests} requests ({first_round} if calibration refuses" in teacher_line
    assert re.search(r"teacher +[\d.]+ (s|min) to [\d.]+ (s|min)", teacher_line), teacher_line
    assert ", the shorter if calibration refuses the judge in its first round" in plan_line(recipe, est)
    assert plan_seconds(est)["teacher"] == [round(est.fewest_seconds["teacher"], 1), round(est.seconds["teacher"], 1)]

    for fail_fast, on_failed in (("false", "pass"), ("true", "stop")):
        # the whole set graded at once, or a refused judge that stops the run: every request counts
        other = estimate(parse_recipe(JUDGED.format(fail_fast=fail_fast, on_failed=on_failed), "r.yaml"), None,
                         workdir, train=False)
        assert other.fewest_requests == (len(items) if on_failed == "pass" else other.requests)
        assert "teacher" not in other.fewest_seconds or on_failed == "pass"


def test_the_first_teachers_start_overlaps_the_curation_before_it(workdir, monkeypatch):
    """pond starts the first served teacher a step needs before ingest (pond.runner): its start is hidden behind
    the curation seconds before that step, up to the whole start."""
    from pond.steps import STEPS

    monkeypatch.setattr(costs, "machine_costs", lambda: costs.CPU_FP32)
    recipe = parse_recipe(JUDGED.format(fail_fast="false", on_failed="stop"), "r.yaml")
    start = costs.by_size(costs.CPU_FP32.serve_start_s, 1.5e9)
    quick = estimate(recipe, None, workdir, train=False)
    # exact_dedup made as slow as the start is long: the whole start overlaps it
    monkeypatch.setitem(STEPS, "exact_dedup", dataclasses.replace(STEPS["exact_dedup"], rows_per_s=1e-3))
    slow = estimate(recipe, None, workdir, train=False)
    assert slow.seconds["curation"] > start
    assert quick.seconds["teacher"] - slow.seconds["teacher"] == pytest.approx(
        start - quick.seconds["curation"], rel=1e-6)
    assert f"judge start {start:.0f} s ({start:.0f} s of it while curation runs)" in slow.notes["teacher"]


def test_no_time_without_measured_costs(workdir, monkeypatch):
    monkeypatch.setattr(costs, "machine_costs", lambda: None)  # a GPU: nothing measured there
    est = estimate(parse_recipe(TEACHER.format(candidates=3), "r.yaml"), None, workdir)
    assert est.seconds == {} and "not timed" in plan_line(parse_recipe(TEACHER.format(candidates=3), "r.yaml"), est)


def test_model_sizes_and_scaling():
    assert costs.model_params("smollm2-135m-instruct") == 135e6
    assert costs.model_params("qwen2.5-coder-1.5b-instruct") == 1.5e9
    assert costs.model_params("my-model") is None
    figures = {"small": 2.0, "large": 12.0}
    assert costs.by_size(figures, 135e6) == 2.0 and costs.by_size(figures, 1.5e9) == 12.0
    assert costs.by_size(figures, 7e9) > 12.0 and costs.by_size(figures, None) == 12.0
    assert costs.student_scale("smollm2-135m-instruct", 4, 1, 256) == 1.0
    # a training step is charged by method; a method not measured pays the dearest measured one
    c = dataclasses.replace(costs.CPU_FP32, train_step_s={"qlora": 3.0, "lora": 2.0})
    assert (c.step_s("lora"), c.step_s("qlora"), c.step_s("full"), c.step_s("dpo")) == (2.0, 3.0, 3.0, 3.0)


def test_plan_is_the_first_line_and_stages_say_their_time(workdir):
    lines: list[str] = []
    recipe = parse_recipe(CURATION, "r.yaml")
    run_pipeline(recipe, workdir / "run", workdir, log=lines.append)
    assert re.match(r"plan: est: \d+ rows through 2 steps; about [\d.]+ (s|min) on this machine", lines[0]), lines[0]
    # the manifest keeps the plan's figures beside the stages' measured times, for bench/demo.py to set side by side
    manifest = json.loads((workdir / "run" / "manifest.json").read_text())
    est = estimate(recipe, None, workdir)
    assert manifest["plan"] == {"line": lines[0], "seconds": plan_seconds(est), "costs": est.costs.label}
    assert manifest["plan"]["seconds"]["curation"] == [round(est.seconds["curation"], 1)] * 2
    assert set(manifest["timings"]) == {"curation_and_synthesis"}
    assert "── curation and synthesis: started" in lines
    assert any(re.fullmatch(r"── curation and synthesis: done in \d+ s", x) for x in lines), lines
    assert any(re.match(r"01-holdout: started, \d+ rows in", x) for x in lines), lines


def test_plan_line_does_not_read_a_big_input_into_memory(workdir, monkeypatch):
    import pond.estimate
    import pond.pipeline

    monkeypatch.setattr(pond.pipeline, "PLAN_MAX_INPUT_BYTES", 10)  # every input is "big" now
    monkeypatch.setattr(pond.estimate, "input_rows", lambda *a, **k: pytest.fail("the plan read the input"))
    lines: list[str] = []
    run_pipeline(parse_recipe(CURATION, "r.yaml"), workdir / "run", workdir, log=lines.append)
    assert re.match(r"plan: est: \d+ MB of input; `pond run --estimate` counts and times it", lines[0]), lines[0]


def test_cli_run_prints_the_plan_first_and_bars_with_an_eta(workdir):
    import os
    import subprocess
    import sys

    (workdir / "r.yaml").write_text(CURATION.replace("exact_dedup: {}", "heuristics: {min_words: 1}"))
    env = {**os.environ, "POND_PROGRESS": "1", "COLUMNS": "120"}
    res = subprocess.run([sys.executable, "-m", "pond.cli", "run", "r.yaml", "--out", "run"], cwd=workdir,
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert re.match(r"plan: est: \d+ rows through 2 steps; about [\d.]+ (s|min) on this machine", lines[0]), lines
    bar = next(x for x in lines if x.startswith("heuristics"))
    assert re.search(r"\d+/\d+ +\d+:\d\d:\d\d eta +\d+:\d\d:\d\d", bar), bar  # count, time so far, ETA


def test_a_finished_ingest_is_reused_only_for_the_same_input(workdir):
    from pond.estimate import input_rows

    recipe = parse_recipe(CURATION, "r.yaml")
    run_pipeline(recipe, workdir / "run", workdir)
    ingested = pl.read_parquet(workdir / "run/steps/00-ingest/kept.parquet")
    assert input_rows(recipe, workdir / "run", workdir).equals(ingested)
    limited = parse_recipe(CURATION.replace("rows.jsonl}", "rows.jsonl, limit: 5}"), "r.yaml")
    assert len(input_rows(limited, workdir / "run", workdir)) == 5  # other input options: read again
    with open(workdir / "rows.jsonl", "a") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "one more"},
                                         {"role": "assistant", "content": "row"}]}) + "\n")
    assert len(input_rows(recipe, workdir / "run", workdir)) == len(ingested) + 1  # the file changed


def test_a_steps_rate_is_its_own_or_the_slowest_measured(workdir, monkeypatch):
    """A step's rows per second stand beside it in the step table; one not measured is charged the slowest."""
    from pond.steps import STEPS

    monkeypatch.setattr(costs, "machine_costs", lambda: costs.CPU_FP32)
    measured = estimate(parse_recipe(CURATION, "r.yaml"), None, workdir)
    assert measured.heldout == 3  # the held-out step's draw, read for the evaluation's time
    own = STEPS["exact_dedup"].rows_per_s
    monkeypatch.setitem(STEPS, "exact_dedup", dataclasses.replace(STEPS["exact_dedup"], rows_per_s=None))
    unmeasured = estimate(parse_recipe(CURATION, "r.yaml"), None, workdir)
    rows = measured.rows - 3  # what reaches exact_dedup after the draw
    extra = rows / costs.slowest_rows_per_s() - rows / own
    assert unmeasured.seconds["curation"] - measured.seconds["curation"] == pytest.approx(extra)


def test_a_runs_measured_pace_is_charged_to_the_student_by_the_next_plan(workdir, monkeypatch):
    from pond import pace

    monkeypatch.setattr(costs, "machine_costs", lambda: costs.CPU_FP32)
    recipe = parse_recipe(TEACHER.format(candidates=3), "r.yaml")
    before = estimate(recipe, None, workdir)
    assert before.costs.pace == 1 and "pace" not in plan_line(recipe, before)
    plan = {"costs": costs.CPU_FP32.label, "seconds": {"training": [100.0, 100.0], "evaluation": [50.0, 50.0],
                                                      "experiment": [10.0, 10.0]}}
    # the experiment, planned under MIN_STAGE_S, is left out: (40 + 35) / (100 + 50)
    assert pace.record(plan, {"train": 40.0, "evaluate": 35.0, "experiment": 30.0}, Path("run")) == 0.5
    (kept,) = json.loads(pace.pace_file().read_text()).values()
    assert kept["run"] == str(Path("run").resolve()) and kept["stages"] == ["training", "evaluation"]
    after = estimate(recipe, None, workdir)
    assert after.costs.pace == 0.5 and after.costs.request_s == before.costs.request_s
    for stage in ("training", "evaluation", "experiment"):
        assert after.seconds[stage] == pytest.approx(before.seconds[stage] * 0.5), stage
    for stage in ("curation", "teacher"):  # the teacher and the curation steps keep the class's figures
        assert after.seconds[stage] == before.seconds[stage], stage
    assert "the student's compute at x0.50, this machine's pace" in plan_line(recipe, after)
    assert any("this machine's pace x0.50" in s for s in after.costs.sources)
    # a paced plan that was right keeps the pace; one that was 20% short moves it
    paced_plan = {**plan, "pace": 0.5}
    assert pace.record(paced_plan, {"train": 100.0, "evaluate": 50.0}, workdir / "run") == 0.5
    assert pace.record(paced_plan, {"train": 120.0, "evaluate": 60.0}, workdir / "run") == 0.6
    # a file edited into nonsense, or unreadable, plans at the class's costs
    for text in ('{"%s": {"pace": 0}}' % pace._key(costs.CPU_FP32.label), "{not json", "[1]"):
        pace.pace_file().write_text(text)
        assert pace.paced(costs.CPU_FP32) is costs.CPU_FP32
    # another class of costs (here: the CPU with native bf16) has no pace yet
    assert pace.paced(costs.CPU_BF16) is costs.CPU_BF16
    # nothing to learn from: no timed student stage, or a plan without costs (a GPU)
    assert pace.record(plan, {"train": 0.0}, workdir / "run") is None
    assert pace.record({"seconds": plan["seconds"]}, {"train": 40.0}, workdir / "run") is None
