"""The instruments that need no judge, wired into pond: reference loss on strong answers, IFEval as a benchmark,
failure rates of generated answers; their bad input; their place in a run's and an experiment's report."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from evaluation.config import EvaluateConfig
from training.config import TrainConfig


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs)


# --------------------------------------------------------------------------- reference sets


def test_alpaca_eval_is_805_prompt_answer_pairs_and_samples_are_fixed():
    from evaluation.reference import load_reference

    full = load_reference("alpaca_eval")
    assert full.height == 805
    assert [m["role"] for m in full["messages"][0]] == ["user", "assistant"]
    s = load_reference("alpaca_eval", rows=40)
    assert s.height == 40 and s["id"].to_list() == load_reference("alpaca_eval", rows=40)["id"].to_list()


def test_reference_bad_input_is_one_line(tmp_path):
    from evaluation.reference import load_reference

    bad = tmp_path / "refs.jsonl"
    bad.write_text(json.dumps({"prompt": "only a prompt", "response": ""}) + "\n")
    with pytest.raises(ValueError) as e:
        load_reference(str(bad))
    assert str(bad) in str(e.value) and "no usable prompt/response pair" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="alpaca_eval"):
        load_reference(str(tmp_path / "missing.jsonl"))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown benchmark 'mtbench': known ones are mt_bench, ifeval"):
        EvaluateConfig(benchmark="mtbench", judge="j")
    with pytest.raises(ValueError, match="unknown reference 'alpaca': known ones are alpaca_eval"):
        EvaluateConfig(reference="alpaca")
    assert EvaluateConfig(benchmark="ifeval").judge is None  # checked by code: no judge needed
    with pytest.raises(ValueError, match="needs a judge"):
        EvaluateConfig(benchmark="mt_bench")


def test_long_reference_rows_are_counted_not_dropped(tiny_llama_dir, tmp_path):
    from evaluation.reference import fit, load_reference, reference_losses
    from training.model import load_tokenizer

    f = tmp_path / "refs.jsonl"
    f.write_text(_rows([("Say hi.", "Hi!"), ("Tell a long story.", "word " * 300), ("x " * 400, "late answer")]))
    ref = load_reference(str(f))
    got = fit(ref, load_tokenizer(tiny_llama_dir), 64)
    assert (got["rows"], got["truncated"], got["unscorable"]) == (3, 2, 1)
    losses = reference_losses(tiny_llama_dir, "lora", "fp32", ref, 64)
    assert losses.height == 3 and losses["tokens"].to_list()[2] == 0 and all(t > 0 for t in losses["tokens"][:2])


def test_arms_lose_rows_that_overlap_an_evaluation_set():
    from evaluation.arms import remove_overlap
    from evaluation.reference import load_reference

    ref = load_reference("alpaca_eval", rows=20)
    mine = pl.DataFrame({"id": ["a"], "messages": [[{"role": "user", "content": "hello there"},
                                                    {"role": "assistant", "content": "hi"}]], "text": ["hello there hi"]},
                        schema=ref.schema)
    kept, n = remove_overlap(pl.concat([ref.head(2), mine]), ref)
    assert n == 2 and kept["id"].to_list() == ["a"]


# --------------------------------------------------------------------------- failure rates


def test_failure_detectors_are_curations():
    from curation import answer_faults as faults
    from evaluation.failures import detect

    f = detect("What is the capital of France?", "I'm sorry, but I cannot help with that.", 12, 64)
    assert f["refusal"] and not f["hit_cap"] and not f["empty"]
    assert detect("Why is the sky blue?", "  ", 0, 64)["empty"]
    assert detect("Why is the sky blue?", "The sky is blue because", 64, 64)["hit_cap"]
    loop = " ".join(["the cat sat on the mat"] * 20)
    assert detect("Tell me about cats.", loop, 120, 256)["repetition"]
    prompt = "Explain in two sentences why the sky looks blue during the day."
    ru = ("Небо голубое, потому что солнечный свет рассеивается молекулами воздуха, и синий свет рассеивается "
          "гораздо сильнее, чем красный.")
    assert detect(prompt, ru, 40, 256)["wrong_language"] == (faults.language_mismatch(prompt, ru) is not None) is True
    assert detect("Hi", "Hello", None, 64)["hit_cap"] is None


def test_failure_summary_rates_and_differences():
    from evaluation.failures import FAULTS, summarise_failures

    rows = [{"model": m, "question_id": q, **{f: False for f in FAULTS}} for m in ("a", "b") for q in "pqrs"]
    for r in rows:
        r["refusal"] = r["model"] == "a" and r["question_id"] in "pq"
    s = summarise_failures(pl.DataFrame(rows), {"a": ["a"], "b": ["b"]}, "b", resamples=200)
    assert s["groups"]["a"]["refusal"]["rate"]["mean"] == 0.5 and s["groups"]["a"]["refusal"]["count"] == 2
    assert s["groups"]["a"]["refusal"]["minus_baseline"]["mean"] == 0.5
    assert s["groups"]["b"]["empty"]["rate"]["mean"] == 0.0
    from evaluation.failures import failure_lines

    s["prompts"] = 4
    row = next(line for line in failure_lines(s, "b", "95%") if line.startswith("| `a`"))
    d = s["groups"]["a"]["refusal"]["minus_baseline"]
    assert f"(+50.0 [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}])" in row  # the difference and its interval


# --------------------------------------------------------------------------- in a run and an experiment


@pytest.mark.slow  # ~80 s on a busy 2-core CPU: two models generate and score
def test_evaluate_run_with_ifeval_and_a_reference(tiny_llama_dir, tmp_path, sharegpt_df):
    """A tiny model answers 3 IFEval prompts (transformers, 4 tokens) and is scored on 3 reference rows."""
    from peft import LoraConfig, get_peft_model

    from evaluation.experiment import evaluate_run
    from evaluation.metrics import load_for_eval

    base, _ = load_for_eval(tiny_llama_dir, "lora", "fp32")
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter")
    refs = tmp_path / "refs.jsonl"
    refs.write_text(_rows([("Say hi.", "Hi there, friend!"), ("Name a colour.", "Blue."), ("Count.", "one " * 80)]))
    train = TrainConfig(student=str(tiny_llama_dir), method="lora", max_seq_len=64, compute_dtype="fp32", threads=2)
    config = EvaluateConfig(benchmark="ifeval", benchmark_sample=3, generation="transformers", max_new_tokens=4,
                            reference=str(refs), reference_max_seq_len=64, bootstrap_resamples=200)
    (tmp_path / "run").mkdir()
    turns = lambda a: [{"role": "user", "content": "Count."}, {"role": "assistant", "content": a}]  # noqa: E731
    pl.DataFrame({"id": ["a", "b"], "messages": [turns("one " * 30), turns("two")], "text": ["", ""]}).write_parquet(
        tmp_path / "run" / "curated.parquet")  # row a shares 13-grams with a reference answer
    out = evaluate_run(tmp_path / "run", tmp_path / "adapter", sharegpt_df.slice(300, 6), config, train)
    b = out["benchmark"]
    assert b["name"] == "ifeval" and b["prompts"] == 3 and set(b["groups"]) == {"base", "adapter"}
    assert set(b["groups"]["adapter"]["all"]) == {"prompt_strict", "prompt_loose", "instruction_strict",
                                                  "instruction_loose"}
    assert b["max_new_tokens"] == 4 and isinstance(b["capped"], dict)
    assert b["failures"]["groups"]["adapter"]["hit_cap"]["answers"] == 3
    r = out["reference"]
    assert r["fit"]["rows"] == 3 and r["fit"]["truncated"] == 1 and r["training_rows_overlapping"] == 1
    assert r["adapter"]["low"] <= r["adapter"]["mean"] <= r["adapter"]["high"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## IFEval" in report and "## Failure rates" in report and "## Reference loss" in report


def test_experiment_report_carries_reference_ifeval_and_failures(tmp_path):
    """Known per-row figures through add_reference and add_benchmark: the better arm wins on reference loss
    with an interval that excludes zero; IFEval and the failure rates get their sections."""
    from evaluation.failures import FAULTS, summarise_failures
    from evaluation.ifeval import SCORE_SCHEMA, summarise_ifeval
    from evaluation.report import add_benchmark, add_reference, write_report

    rng = np.random.default_rng(0)
    rows = 60
    loss = rng.normal(2.0, 0.4, rows)
    frame = lambda shift: pl.DataFrame({"id": [str(i) for i in range(rows)],  # noqa: E731
                                        "nll": (loss + shift + rng.normal(0, 0.01, rows)) * 10,
                                        "tokens": np.full(rows, 10)})
    arm = lambda name: {"name": name, "data": name, "profile": {"rows": 10, "answer_chars_mean": 1.0,  # noqa: E731
                                                                "structured_share": 0.0},
                        "plan": {"rows_per_step": 2}, "rows": 10, "steps_mean": 2.0, "train_seconds_mean": 1.0,
                        "answer_tokens_seen_mean": 10.0, "metrics": {}, "vs_random_n": {}, "vs_base_model": {},
                        "seeds": [{"seed": 0}, {"seed": 1}]}
    summary = {"metric": "reference_loss", "lower_is_better": True, "baseline": "random_n", "confidence": 0.95,
               "bootstrap_resamples": 300, "metrics_available": [], "heldout_rows": 0, "base_model": {},
               "arms": [arm("curated"), arm("random_n")], "slices": {}, "verdict": {}}
    add_reference(summary, {"name": "alpaca_eval", "fit": {"rows": rows, "max_seq_len": 512, "truncated": 4,
                                                          "unscorable": 0},
                            "base": frame(0.5), "arms": {"curated": [frame(-0.2), frame(-0.2)],
                                                         "random_n": [frame(0.0), frame(0.0)]}})
    cur = summary["arms"][0]
    assert summary["verdict"]["winner"] == "curated" and summary["verdict"]["excludes_zero"] is True
    assert cur["vs_random_n"]["reference_loss"]["mean"] == pytest.approx(-0.2, abs=0.01)
    assert summary["base_model"]["reference_loss"]["mean"] == pytest.approx(2.5 + loss.mean() - 2.0, abs=0.05)

    models = {"base": ["base"], "curated": ["curated-s0"], "random_n": ["random_n-s0"]}
    scores = pl.DataFrame([(m, f"p{i}", 0, "punctuation:no_comma", m != "random_n-s0" or i % 2 == 0, True, False)
                           for m in ("base", "curated-s0", "random_n-s0") for i in range(20)],
                          schema=list(SCORE_SCHEMA), orient="row")
    bench = summarise_ifeval(scores, models, "random_n", max_new_tokens=256, resamples=300)
    table = pl.DataFrame([{"model": m, "question_id": f"p{i}", **{f: False for f in FAULTS}}
                          for m in ("base", "curated-s0", "random_n-s0") for i in range(20)])
    bench["failures"] = summarise_failures(table, models, "random_n", resamples=300)
    add_benchmark(summary, bench)
    assert cur["metrics"]["ifeval_prompt_strict"]["mean"] == 1.0
    assert cur["vs_random_n"]["ifeval_prompt_strict"]["mean"] == pytest.approx(0.5)
    assert "ifeval_instruction_strict" in summary["metrics_available"]
    from evaluation.ifeval import headline

    assert "difference +50.0 points" in headline(bench, "curated", "random_n")
    write_report(tmp_path / "report.md", summary, title="t", heldout_source="x", notes=[])
    text = (tmp_path / "report.md").read_text()
    for part in ("## Reference loss: alpaca_eval", "4 rows longer than 512", "## IFEval", "## Failure rates",
                 "`curated` won on reference loss"):
        assert part in text, part
