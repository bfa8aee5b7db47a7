"""The quickstart recipe, scaled down, end to end against the real vLLM teacher (issue 8).

Real ShareGPT rows in; every curation step; edge cases written by the vLLM teacher and judged;
QLoRA training of the student; held-out evaluation; curated vs noisy experiment. Then the run
directory must be complete and consistent: counts conserve, manifest hashes match the files,
the adapter card names the curated set's hash, and a rerun resumes without calling the teacher.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from curation.store import file_digest
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.teacher


def scaled_quickstart(tmp_path: Path, teacher_url: str, teacher_model: str, student: Path) -> str:
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    raw = tmp_path / "raw.jsonl"
    from curation.sources import iter_sharegpt

    with open(raw, "w") as f:
        for record in iter_sharegpt(limit=160):
            f.write(json.dumps(record) + "\n")
    recipe["input"] = {"path": str(raw)}
    steps = []
    for step in recipe["steps"]:
        (kind, opts), = step.items()
        opts = dict(opts)
        if kind == "holdout":
            opts["n"] = 12
        if kind == "embed_quality":
            opts["reference"] = str(ROOT / "recipes" / "data" / "gold.jsonl")
            opts["min_score"] = 0.05
        if kind == "select":
            opts["n"] = 24
        if kind == "synthesize":
            opts.update(n=3, max_tokens=64)
        if kind == "judge":
            opts["min_score"] = 1  # the tiny teacher judges here: protocol and bookkeeping, not wisdom
            # the writer's own model judges here, so only the real rows (a model judging the rows it wrote
            # must be a calibrated self_judge), and uncalibrated: SmolLM2-135M cannot judge, and calibration
            # refuses it (tests/test_calibration.py)
            opts["rows"] = "real"
            opts["calibrate"] = False
        steps.append({kind: opts})
    recipe["steps"] = steps
    # both teachers are the test session's vLLM server (no `serve:`: it is already running)
    recipe["teachers"] = {name: {"base_url": teacher_url, "model": teacher_model, "max_concurrency": 8}
                          for name in ("writer", "judge")}
    # the tiny random Llama stands in for SmolLM2 here (the slow tests train the real student)
    recipe["train"].update(student=str(student), max_steps=2, batch_size=2, max_seq_len=128, save_steps=1)
    recipe["evaluate"] = {"heldout": "run:heldout.parquet", "n_generate": 0, "batch_size": 4,
                          "reference": "alpaca_eval", "reference_rows": 4, "reference_max_seq_len": 256}
    recipe["experiment"].update(steps=2, seeds=[0], mlflow=False)
    return yaml.safe_dump(recipe, sort_keys=False)


def test_quickstart_scaled_down_end_to_end(tmp_path, teacher_server, tiny_llama_dir, monkeypatch):
    from pond import pace

    monkeypatch.setattr(pace, "MIN_STAGE_S", 0.0)  # the tiny student's stages are planned at seconds
    text = scaled_quickstart(tmp_path, teacher_server.base_url, teacher_server.model, tiny_llama_dir)
    recipe = parse_recipe(text, "quickstart")
    out = tmp_path / "run"
    lines: list[str] = []
    summary = run_pipeline(recipe, out, tmp_path, log=lines.append)
    assert "curated:" in summary
    # the quickstart answers no benchmark: the summary names the recipe that does, and how it checks
    assert "benchmark: none in this recipe; `pond experiment recipes/quality_vs_quantity.yaml` has every arm " \
           "answer IFEval, checked by code" in summary

    # every step finished; counts conserve at every step and chain from one step to the next
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = [s["kind"] for s in manifest["steps"]]
    assert kinds == ["ingest"] + [s.kind for s in recipe.steps]
    prev = None
    for d, s in zip(sorted((out / "steps").iterdir()), manifest["steps"]):
        assert (d / "DONE").exists()
        stats = json.loads((d / "stats.json").read_text())
        added = stats.get("attempted", 0) if s["kind"] == "synthesize" else 0
        assert stats["in"] + added == stats["out"] + stats["rejected"], d.name
        assert len(pl.read_parquet(d / "kept.parquet")) == stats["out"]
        assert len(pl.read_parquet(d / "rejected.parquet")) == stats["rejected"]
        if prev is not None:
            assert stats["in"] == prev
        prev = stats["out"]

    # the edge cases are rule-built and answered by their seed rows (no model call); the teacher judged rows
    synth = json.loads((next((out / "steps").glob("*-synthesize")) / "stats.json").read_text())
    assert synth["teacher"].get("sent", 0) == 0 and synth["attempted"] == 3 and synth["new_rows"] >= 1
    curated = pl.read_parquet(out / "curated.parquet")
    judge_stats = json.loads((next((out / "steps").glob("*-judge")) / "stats.json").read_text())
    # judge replies live in the cache every run shares: an earlier session may have answered them all
    teacher = judge_stats["teacher"]
    assert teacher.get("sent", 0) + teacher.get("cache_hits", 0) >= judge_stats["judged"] > 0
    assert "judge_score" in curated.columns

    # the run's student stages, measured against its plan, are this machine's pace for the next plan
    plan, timings = manifest["plan"], manifest["timings"]
    planned = sum(plan["seconds"][s][1] for s in pace.STUDENT_STAGES)
    measured = sum(timings[k] for k in pace.STUDENT_STAGES.values())
    kept = json.loads(pace.pace_file().read_text())
    # (the manifest keeps the timings to 0.1 s: three of them)
    assert [e["pace"] for e in kept.values()] == [pytest.approx(measured / planned, abs=0.15 / planned + 0.001)]
    assert any(x.startswith("pace: the student's compute ran at x") for x in lines), lines

    # manifest hashes match the files on disk
    for name, digest in manifest["outputs"].items():
        assert file_digest(out / name) == digest, name

    # the adapter card names the exact curated set it was trained on
    card = (out / "adapter" / "README.md").read_text()
    assert file_digest(out / "curated.parquet") in card
    assert manifest["train"]["steps"] == 2
    eval_json = json.loads((out / "eval.json").read_text())
    assert eval_json  # base vs adapter on the held-out draw
    experiment = json.loads((out / "experiment" / "experiment.json").read_text())
    assert {a["name"] for a in experiment["arms"]} == {"curated", "noisy_n", "longest_n"}
    assert experiment["budget"] == "equal_tokens" and experiment["metric"] == "reference_loss"
    # the verdict is on the reference answers, paired on their rows, beside held-out loss
    assert experiment["reference"]["fit"]["rows"] == 4
    # the quickstart's experiment scores the reference answers alone (score_heldout false): held-out loss is the
    # evaluation's (base vs adapter)
    assert all("reference_loss" in a["metrics"] and "heldout_loss" not in a["metrics"] for a in experiment["arms"])
    assert set(experiment["base_model"]) == {"reference_loss"} and not experiment["slices"]
    assert "(no arm scored on it: score_heldout false)" in (out / "experiment" / "report.md").read_text()
    assert "heldout_loss" in eval_json["adapter"] and "adapter_minus_base" in eval_json["reference"]
    # the training saw no held-out loss (eval_steps 0): the evaluation scored the adapter
    assert manifest["train"]["eval_losses"] == [] and eval_json
    assert (out / "experiment" / "plot.png").stat().st_size > 1000
    # the curated arm trains on the final set as `pond run` did: its adapter is the run's own, not trained again,
    # and the base model's and that adapter's losses are the evaluation's, read back (one file per model and set)
    curated_arm = json.loads((out / "experiment" / "arms" / "curated" / "seed-0" / "eval.json").read_text())
    assert curated_arm["train"]["adapter_dir"] == str(out / "adapter")
    assert not (out / "experiment" / "arms" / "curated" / "seed-0" / "adapter").exists()
    from evaluation.generation import adapter_fingerprint

    run_models = {None, adapter_fingerprint(out / "adapter")}
    arm_models = {adapter_fingerprint(out / "experiment" / "arms" / a / "seed-0" / "adapter")
                  for a in ("noisy_n", "longest_n")} - run_models
    # one file per distinct model and row set: the base model and the run's adapter on the held-out and the
    # reference rows, each other arm on the reference rows (two arms of one step under warm-up can be equal)
    assert len(list((out / "eval" / "losses").glob("*.parquet"))) == 2 * len(run_models) + len(arm_models)

    # a rerun resumes: no step re-runs, no teacher request is sent, curated bytes unchanged
    before = teacher_server.metrics()
    digest = file_digest(out / "curated.parquet")
    run_pipeline(recipe, out, tmp_path)
    after = teacher_server.metrics()
    assert after == before
    assert file_digest(out / "curated.parquet") == digest
    assert all(s.get("skipped") for s in json.loads((out / "manifest.json").read_text())["steps"])
