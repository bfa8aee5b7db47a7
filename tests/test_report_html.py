"""report.html: written by a real `pond run` (and `pond inspect --html` for any run folder), opened in
Debian's headless Chromium: every chart rendered, no console errors, nothing fetched from outside the
file, injected markup shown as text, and the figures equal to what the run folder holds.

The fast run is real curation of real ShareGPT rows (holdout, exact dedup, heuristics, embedding
quality against the gold rows, select) plus `synthesize` against the scripted fake teacher (a real
generator through the real client; the fake only writes the replies), with no training. The run with
a training curve, an experiment and an adapter card is the slow test at the end (tiny random Llama).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from pond import layout, report_data
from tests.browser import open_page, screenshot_is_real

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "recipes" / "data" / "gold.jsonl"
# A real-looking conversation whose answer is markup that runs if the report does not escape it.
XSS = '<img src=x onerror="window.__pond_xss=1"><script>window.__pond_xss=2</script>'
XSS_ROW = {"messages": [{"role": "user", "content": "Show me an HTML image tag with an error handler, please."},
                        {"role": "assistant", "content": f"Here is one, exactly as asked: {XSS} and that is all."}]}

RECIPE = {
    "name": "report-fast", "input": {"path": "raw.jsonl"}, "seed": 0,
    "steps": [{"holdout": {"n": 5}}, {"exact_dedup": {}}, {"heuristics": {"min_words": 3, "max_words": 4000}},
              {"embed_quality": {"reference": str(GOLD), "min_score": 0.1}},
              {"select": {"n": 20, "strategy": "quality_diverse"}},
              {"synthesize": {"generator": "edge_cases", "n": 4, "per_call": 1, "teacher": "writer",
                              "max_tokens": 96}}],
}


def pond(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pond.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory) -> Path:
    """A real `pond run --no-train` folder (curation + synthesis), ~20 s."""
    from curation.sources import iter_sharegpt
    from tests.fixtures_teacher import FakeTeacher, schema_instance

    work = tmp_path_factory.mktemp("report")
    with open(work / "raw.jsonl", "w") as f:
        for row in [XSS_ROW, XSS_ROW, *iter_sharegpt(limit=90)]:  # the second copy is an exact duplicate
            f.write(json.dumps(row) + "\n")
        f.write("{not json\n")
    def reply(body, i):  # the default fake's answers end mid-phrase, which the answer checks now reject
        fmt, last = body.get("response_format") or {}, body["messages"][-1]["content"]
        if fmt.get("type") == "json_schema":
            return json.dumps(schema_instance(fmt["json_schema"]["schema"], f"{last}/{i}"))
        return f"Here is a complete answer, number {i}, to request {hashlib.sha1(last.encode()).hexdigest()[:8]}."

    fake = FakeTeacher(reply=reply).start()
    try:
        recipe = {**RECIPE, "teachers": {"writer": {"base_url": fake.base_url, "model": "fake-writer",
                                                    "max_concurrency": 4}}}
        (work / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        res = pond("run", "r.yaml", "--out", "runs/fast", "--no-train", cwd=work)
    finally:
        fake.stop()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report.html: " in res.stdout  # the run's summary points at it
    return work / "runs" / "fast"


def test_pond_run_writes_a_report_that_renders_in_chromium(fast_run, tmp_path):
    html = fast_run / layout.REPORT_HTML
    assert html.is_file()
    page = open_page(html, tmp_path / "shot.png")
    assert page["errors"] == []
    # self-contained: the page asked for nothing but itself (plotly.js is inline)
    assert page["requests"] and all(u.startswith(("file:", "data:")) for u in page["requests"]), page["requests"]
    charts = page["charts"]
    scores = report_data.score_columns(fast_run)
    expected = {"chart-funnel", "chart-reasons", "chart-synthetic",
                *(f"chart-score-{s['step'].replace('_', '-')}-{s['column']}" for s in scores)}
    assert expected <= set(charts), charts
    assert all(n >= 1 for n in charts.values()), charts  # plotly drew every one (its .main-svg layers)
    # the charts were drawn from the run's figures: funnel bars, score histograms, synthetic shares
    funnel = report_data.funnel(fast_run)
    assert dict(page["traces"]["chart-funnel"]) == {"kept": sum(r["kept"] for r in funnel),
                                                   "rejected": sum(r["rejected"] for r in funnel),
                                                   "rows in": sum(r["in"] for r in funnel)}
    for s in scores:
        drawn = page["traces"][f"chart-score-{s['step'].replace('_', '-')}-{s['column']}"]
        assert [y for _, y in drawn] == [len(s[k]) for k in ("kept", "rejected") if len(s[k])]
    synthetic = page["traces"]["chart-synthetic"]
    assert len(synthetic) == 4 and all(y == pytest.approx(100, abs=0.1) for _, y in synthetic)  # shares of a group
    width, height, colours = screenshot_is_real(tmp_path / "shot.png")
    assert width == 1200 and height > 3000 and colours > 200, (width, height, colours)
    # the parts a run without training does not have are said, not skipped silently
    for part in ("Training curve", "Experiment", "Adapter card"):
        assert part in page["text"]
    assert page["text"].count("Not in this run") == 4  # training, experiment, evaluation, adapter card
    # the injected markup is shown as text, never run
    assert page["xss"] is None
    assert 'onerror="window.__pond_xss=1"' in page["text"]


def test_the_report_shows_what_the_run_folder_holds(fast_run):
    funnel = report_data.funnel(fast_run)
    for row, d in zip(funnel, layout.step_dirs(fast_run), strict=True):
        stats = json.loads((d / layout.STATS).read_text())
        assert (row["in"], row["kept"], row["rejected"]) == (stats["in"], stats["out"], stats["rejected"])
    assert [r["step"] for r in funnel][-1] == "06-synthesize"
    # every example row is a real rejected row of that step, with that reason
    reasons = report_data.reasons(fast_run)
    assert {s["step"] for s in reasons} >= {"00-ingest", "01-holdout", "02-exact_dedup", "04-embed_quality"}
    for s in reasons:
        rejected = pl.read_parquet(layout.step_dir(fast_run, s["step"]) / layout.REJECTED)
        for r in s["reasons"]:
            assert r["rows"] == rejected.filter(layout.reason_tag() == r["reason"]).height
            assert r["examples"]
            for e in r["examples"]:
                row = rejected.filter(pl.col("id") == e["id"])
                assert layout.tag_of(row["reason"][0]) == r["reason"]
                assert e["text"] == report_data.clip(row["text"][0])
    # the embedding score over every row the step scored, kept and rejected by its threshold
    (quality,) = [s for s in report_data.score_columns(fast_run) if s["column"] == "quality"]
    step = layout.step_dir(fast_run, "04-embed_quality")
    assert sorted(quality["kept"]) == sorted(pl.read_parquet(step / layout.KEPT)["quality"].to_list())
    assert sorted(quality["rejected"]) == sorted(pl.read_parquet(step / layout.REJECTED)["quality"].to_list())
    assert len(quality["rejected"]) and quality["rejected"].max() < 0.1 <= quality["kept"].min()
    # synthetic against real: the curated set's own rows
    cmp = report_data.synthetic_vs_real(fast_run, ["quality"])
    curated = pl.read_parquet(fast_run / layout.CURATED)
    n_synthetic = curated.filter(pl.col("source").str.starts_with("synthetic:")).height
    assert n_synthetic > 0 and cmp["groups"]["synthetic"]["rows"] == n_synthetic
    assert cmp["groups"]["real"]["rows"] == curated.height - n_synthetic
    real = curated.filter(~pl.col("source").str.starts_with("synthetic:"))
    assert cmp["groups"]["real"]["scores"]["quality"] == pytest.approx(real["quality"].mean())
    # fixed chart ids, no timestamps: rendering the folder again gives the bytes `pond run` wrote
    from pond.report_html import render

    assert render(fast_run) == (fast_run / layout.REPORT_HTML).read_text(encoding="utf-8")


def test_inspect_html_on_partial_and_old_runs(fast_run, tmp_path):
    # an old or half-finished run: no curated set, no manifest, an unfinished step, a step without stats
    run = tmp_path / "partial"
    shutil.copytree(fast_run, run)
    for name in (layout.CURATED, layout.MANIFEST, layout.REPORT_HTML):
        (run / name).unlink()
    (layout.step_dir(run, "06-synthesize") / layout.DONE).unlink()
    (layout.step_dir(run, "05-select") / layout.STATS).unlink()
    res = pond("inspect", str(run), "--html", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = (run / layout.REPORT_HTML).read_text()
    assert 'id="chart-funnel"' in text and "Not in this run: no <code>manifest.json</code>" in text
    # the final set of a run without curated.parquet is its last finished step's kept rows
    assert report_data.final_rows(run)[1].startswith("05-select/kept.parquet")
    # a run folder that has only begun: every part says so
    bare = tmp_path / "bare"
    (bare / layout.STEPS).mkdir(parents=True)
    res = pond("inspect", str(bare), "--html", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = (bare / layout.REPORT_HTML).read_text()
    assert text.count("Not in this run") == 9 and "plotly-graph-div" not in text
    res = pond("inspect", str(tmp_path), "--html", cwd=tmp_path)
    assert res.returncode == 2 and "not a pond run directory" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_trained_run_with_an_experiment_shows_its_curves_and_card(tmp_path, tiny_llama_dir):
    """A real `pond run` that trains (tiny random Llama), evaluates and runs a 2-arm experiment: ~2-4 min."""
    from curation.sources import iter_sharegpt

    with open(tmp_path / "raw.jsonl", "w") as f:
        for row in iter_sharegpt(limit=60):
            f.write(json.dumps(row) + "\n")
    recipe = {"name": "report-slow", "input": {"path": "raw.jsonl"}, "seed": 0,
              "steps": [{"holdout": {"n": 6}}, {"exact_dedup": {}}, {"heuristics": {}},
                        {"select": {"n": 16, "strategy": "longest"}}],
              "train": {"student": str(tiny_llama_dir), "method": "lora", "max_steps": 4, "batch_size": 2,
                        "max_seq_len": 64, "lr": 1e-3, "save_steps": 2},
              "evaluate": {"heldout": "run:heldout.parquet", "n_generate": 0, "batch_size": 4},
              "experiment": {"arms": [{"name": "curated", "data": "curated"}, {"name": "noisy_n", "data": "random_n"}],
                             "baseline": "noisy_n", "budget": "equal_steps", "steps": 3, "seeds": [0],
                             "metric": "heldout_loss", "mlflow": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    res = pond("run", "r.yaml", "--out", "runs/slow", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "slow"
    page = open_page(run / layout.REPORT_HTML, tmp_path / "shot.png")
    assert page["errors"] == [] and all(u.startswith(("file:", "data:")) for u in page["requests"])
    charts = page["charts"]
    assert {"chart-funnel", "chart-training", "chart-experiment", "chart-experiment-curves"} <= set(charts), charts
    assert all(n >= 1 for n in charts.values()), charts
    assert len(page["traces"]["chart-experiment-curves"]) == 2  # one training curve per arm x seed
    assert "pond adapter" in page["text"] and "dataset hash" in page["text"]  # the card, rendered
    # the curve is the trainer's own log of this run
    history = json.loads((run / "train-result.json").read_text())["log_history"]
    curve = report_data.training_curve(run)
    assert curve["loss"] == [(e["step"], e["loss"]) for e in history if "loss" in e]
    assert len(curve["loss"]) == 4 and curve["eval_loss"]
    # this recipe has neither synthetic rows nor a score step; the held-out evaluation's report is shown
    assert page["text"].count("Not in this run") == 2
    assert "the final set has no synthetic rows" in page["text"] and "no step wrote a score column" in page["text"]
    assert "Held-out evaluation" in page["text"] and "held-out" in (run / layout.REPORT).read_text().lower()


def test_histogram_bins_every_value_once():
    from pond.report_html import histogram

    centres, width, counts = histogram({"a": [0.0, 0.5, 1.0, 1.0], "b": [2.0], "empty": []}, bins=4)
    assert centres == pytest.approx([0.25, 0.75, 1.25, 1.75]) and width == pytest.approx(0.5)
    assert counts == {"a": [1, 1, 2, 0], "b": [0, 0, 0, 1], "empty": [0, 0, 0, 0]}
    _, _, shares = histogram({"a": [3.0, 3.0, 5.0]}, bins=2, percent=True)
    assert shares["a"] == pytest.approx([66.667, 33.333])
    _, _, one = histogram({"a": [7.0, 7.0]}, bins=3)  # one value: a range around it, not a division by zero
    assert sum(one["a"]) == 2


def test_a_steps_score_columns_come_from_its_options():
    """The options' score_columns(), read from the options stats.json recorded, an older run's too."""
    assert report_data.step_score_columns("judge", {"column": "complexity", "mode": "score"}) == ["complexity"]
    assert report_data.step_score_columns("judge", {}) == ["judge_score"]  # recorded before the option: its default
    assert report_data.step_score_columns("judge", {"mode": "pairwise", "against": "b"}) == []
    assert report_data.step_score_columns("embed_quality", {"score_column": "q", "gone": 1}) == ["q"]
    assert report_data.step_score_columns("ifd", {}) == ["ifd", "answer_ppl"]
    assert report_data.step_score_columns("heuristics", {}) == []
    assert report_data.step_score_columns("a_kind_since_removed", {}) == []


def test_a_final_set_without_synthetic_rows_has_no_synthetic_section(tmp_path):
    """Found from `source` alone (a null source is not synthetic; `synthetic:` only as a prefix)."""
    from curation.records import synthetic_source

    sources = ["data/a.jsonl", None, "data/synthetic:b.jsonl"]
    assert synthetic_source(pl.Series(sources + ["synthetic:evolve"])).to_list() == [False, False, False, True]
    pl.DataFrame({"id": ["1", "2", "3"], "text": ["x", "y", "z"], "source": sources}).write_parquet(
        tmp_path / layout.CURATED)
    assert report_data.synthetic_vs_real(tmp_path, ["quality"]) is None
