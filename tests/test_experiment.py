"""Quality-vs-quantity experiments: arms, budgets, and a tiny end-to-end run that resumes."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from evaluation.arms import arm_rows, plan_budget, profile, remove_heldout
from evaluation.config import ArmConfig, EvaluateConfig, ExperimentConfig
from evaluation.metrics import is_structured
from synthesis.teachers import Teachers
from training.config import TrainConfig


@pytest.fixture(scope="module")
def split(sharegpt_df):
    """A small noisy pool, a 'curated' subset of it (structured answers), and disjoint held-out rows."""
    from curation.records import answer_text_expr

    pool = sharegpt_df.head(80)
    answers = pool.select(answer_text_expr().alias("a"))["a"].to_list()
    curated = pool.filter(pl.Series([is_structured(a or "") for a in answers])).head(12)
    heldout = sharegpt_df.slice(300, 24)
    return pool, curated, heldout


def test_arm_rows(split):
    pool, curated, heldout = split
    n = curated.height
    r0 = arm_rows(ArmConfig(name="r", data="random_n"), pool, curated, seed=(0, 0))
    r0b = arm_rows(ArmConfig(name="r", data="random_n"), pool, curated, seed=(0, 0))
    r1 = arm_rows(ArmConfig(name="r", data="random_n"), pool, curated, seed=(0, 1))
    assert r0.height == n and r0["id"].to_list() == r0b["id"].to_list()
    assert r0["id"].to_list() != r1["id"].to_list()  # a fresh draw per seed
    assert set(r0["id"]) <= set(pool["id"])

    longest = arm_rows(ArmConfig(name="l", data="longest_n", n=5), pool, curated, seed=0)
    from curation.records import answer_text_expr
    lengths = pool.select(answer_text_expr().str.len_chars().alias("n"))["n"].to_numpy()
    assert sorted(longest.select(answer_text_expr().str.len_chars())[:, 0].to_list(), reverse=True) == \
        sorted(lengths, reverse=True)[:5]
    assert arm_rows(ArmConfig(name="c", data="curated"), pool, curated, seed=0).height == n
    assert arm_rows(ArmConfig(name="f", data="full", n=7), pool, curated, seed=0).height == 7
    with pytest.raises(ValueError, match="larger than the pool"):
        arm_rows(ArmConfig(name="r", data="random_n", n=10_000), pool, curated, seed=0)


def test_arm_from_file(split, tmp_path):
    pool, curated, _ = split
    curated.write_parquet(tmp_path / "other.parquet")
    df = arm_rows(ArmConfig(name="o", data="other.parquet"), pool, curated, seed=0, base_dir=tmp_path)
    assert df["id"].to_list() == curated["id"].to_list()
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        arm_rows(ArmConfig(name="o", data="missing.parquet"), pool, curated, seed=0, base_dir=tmp_path)


def test_heldout_rows_never_reach_training(split):
    pool, _, heldout = split
    mixed = pl.concat([pool, heldout.head(3)], how="diagonal_relaxed")
    # The same text under another id still counts as the held-out row.
    mixed = pl.concat([mixed, heldout.slice(3, 1).with_columns(id=pl.lit("copy"))], how="diagonal_relaxed")
    cleaned, removed = remove_heldout(mixed, heldout)
    assert removed == 4 and cleaned.height == pool.height
    assert not set(cleaned["id"]) & set(heldout["id"])


def test_budget_rules():
    train = TrainConfig(batch_size=4, grad_accum=2, max_steps=10)
    profiles = {"curated": {"rows": 100, "trainable_rows": 100, "answer_tokens_per_row": 200.0,
                            "tokens_per_row": 250.0},
                "full": {"rows": 1000, "trainable_rows": 900, "answer_tokens_per_row": 100.0,
                         "tokens_per_row": 180.0}}
    arms = [ArmConfig(name="curated", data="curated"), ArmConfig(name="full", data="full")]
    steps = plan_budget(ExperimentConfig(arms=arms, budget="equal_steps"), train, profiles)
    assert steps["curated"]["max_steps"] == steps["full"]["max_steps"] == 10
    tokens = plan_budget(ExperimentConfig(arms=arms, budget="equal_tokens"), train, profiles)
    # curated: 10 steps x 8 rows x 200 = 16,000 answer tokens; full needs 16,000 / (8 x 100) = 20 steps.
    assert tokens["curated"]["max_steps"] == 10 and tokens["full"]["max_steps"] == 20
    epochs = plan_budget(ExperimentConfig(arms=arms, budget="equal_epochs"), train.model_copy(
        update={"epochs": 2.0, "max_steps": None}), profiles)
    assert epochs["full"]["max_steps"] is None and epochs["full"]["expected_steps"] == 225
    with pytest.raises(ValueError, match="step count"):
        plan_budget(ExperimentConfig(arms=arms), TrainConfig(), profiles)


def test_config_validation():
    with pytest.raises(ValueError, match="baseline"):
        ExperimentConfig(arms=[ArmConfig(name="a", data="curated")])
    with pytest.raises(ValueError, match="unique"):
        ExperimentConfig(arms=[ArmConfig(name="full", data="full"), ArmConfig(name="full", data="curated")])
    with pytest.raises(ValueError, match="extra"):
        ExperimentConfig(arms_=[])
    with pytest.raises(ValueError, match="n_generate"):
        EvaluateConfig(judge="default")
    for metric in ("heldout_loss", "judge_score"):  # measured on the held-out rows
        with pytest.raises(ValueError, match=f"metric {metric} is measured on the held-out rows"):
            ExperimentConfig(metric=metric, score_heldout=False)
    ExperimentConfig(metric="reference_loss", score_heldout=False)
    ExperimentConfig.model_json_schema()  # the README's recipe reference is generated from this
    EvaluateConfig.model_json_schema()


def test_judge_metric_without_judge_fails_before_training(tmp_path):
    from evaluation.experiment import run_experiment

    empty = pl.DataFrame()
    with pytest.raises(ValueError, match="needs a judge"):
        run_experiment(tmp_path, empty, empty, empty, ExperimentConfig(metric="judge_win_rate"), TrainConfig())
    assert not any(tmp_path.iterdir())


def test_run_experiment_takes_its_context_whole(tmp_path):
    from evaluation.experiment import ExperimentContext, run_experiment

    empty, config = pl.DataFrame(), ExperimentConfig(metric="judge_win_rate")
    with pytest.raises(ValueError, match="needs a judge"):
        run_experiment(tmp_path, empty, empty, empty, config, TrainConfig(), context=ExperimentContext(seed=1))
    with pytest.raises(TypeError, match="seed"):  # the context's fields are not keywords of their own
        run_experiment(tmp_path, empty, empty, empty, config, TrainConfig(), seed=1)


def test_profile_counts_answer_tokens(split, tiny_llama_dir):
    from training.model import load_tokenizer

    _, curated, _ = split
    p = profile(curated, load_tokenizer(tiny_llama_dir), 64)
    assert p["rows"] == curated.height and p["structured_share"] == 1.0
    assert 0 < p["answer_tokens_per_row"] < p["tokens_per_row"] <= 64


def test_experiment_end_to_end_and_resume(split, tiny_llama_dir, tmp_path, monkeypatch):
    pool, curated, heldout = split
    config = ExperimentConfig(arms=[ArmConfig(name="curated", data="curated"), ArmConfig(name="full", data="full")],
                              budget="equal_tokens", steps=2, seeds=[0, 1], bootstrap_resamples=200)
    train = TrainConfig(student=str(tiny_llama_dir), method="lora", batch_size=2, max_seq_len=64, lr=1e-3,
                        compute_dtype="fp32", threads=2, save_steps=100)
    out = tmp_path / "exp"
    summary = json.loads(json.dumps(run_experiment_(out, pool, curated, heldout, config, train)))

    data = json.loads((out / "experiment.json").read_text())
    assert [a["name"] for a in data["arms"]] == ["curated", "full"]
    cur, full = data["arms"]
    assert cur["rows"] == curated.height and full["rows"] == pool.height
    for arm in data["arms"]:
        m = arm["metrics"]["heldout_loss"]
        assert len(m["per_seed"]) == 2 and m["low"] <= m["mean"] <= m["high"]
        assert np.isclose(m["mean"], np.mean(m["per_seed"]))
        for s in arm["seeds"]:
            assert s["train"]["steps"] == arm["plan"]["max_steps"]
            assert (out / "arms" / arm["name"] / f"seed-{s['seed']}" / "adapter" / "adapter_config.json").exists()
    # equal_tokens: the reference arm runs `steps`; `full` (shorter answers per row) runs as many as it needs.
    assert cur["plan"]["max_steps"] == 2
    expected = round(2 * cur["profile"]["answer_tokens_per_row"] / full["profile"]["answer_tokens_per_row"])
    assert full["plan"]["max_steps"] == max(1, expected)
    d = cur["vs_full"]["heldout_loss"]
    assert d["low"] <= d["mean"] <= d["high"]
    assert "heldout_loss" in data["base_model"] and data["heldout_rows"] == heldout.height
    assert set(data["slices"]) == {"structured", "answer_length"}
    assert data["verdict"]["winner"] in ("curated", "full")
    report = (out / "report.md").read_text()
    assert data["verdict"]["sentence"] in report and "base model" in report and "## Slices" in report
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["verdict"] == data["verdict"]
    # MLflow: one run per arm x seed in the local store, with the adapter card as an artifact.
    assert data["mlflow_errors"] == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=data["mlflow_uri"])
    runs = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["curated-seed0", "curated-seed1", "full-seed0", "full-seed1"]
    run = next(r for r in runs if r.info.run_name == "curated-seed1")
    assert run.data.params["dataset_hash"] and "heldout_loss" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"README.md", "dataset.json"}

    # evaluate_run on one of these adapters scores exactly what the experiment scored.
    from evaluation.experiment import evaluate_run

    single = evaluate_run(tmp_path / "single", out / "arms" / "curated" / "seed-0" / "adapter", heldout,
                          EvaluateConfig(batch_size=8, bootstrap_resamples=200), train)
    assert single["base_model"]["heldout_loss"] == pytest.approx(data["base_model"]["heldout_loss"]["mean"], rel=1e-6)
    assert single["adapter"]["heldout_loss"] == pytest.approx(cur["metrics"]["heldout_loss"]["per_seed"][0], rel=1e-6)
    assert (tmp_path / "single" / "eval.json").exists()
    assert "held-out loss" in (tmp_path / "single" / "report.md").read_text()

    # Second call: nothing is trained or scored again, and the result is the same.
    import evaluation.experiment as experiment
    import training.trainer

    def boom(*a, **k):
        raise AssertionError("should not run on resume")

    monkeypatch.setattr(training.trainer, "train", boom)
    monkeypatch.setattr(experiment, "score_model", boom)
    again = run_experiment_(out, pool, curated, heldout, config, train)
    assert again["arms"][0]["metrics"] == data["arms"][0]["metrics"]
    assert len(client.search_runs([client.get_experiment_by_name("exp").experiment_id])) == 4


def run_experiment_(out, pool, curated, heldout, config, train):
    from evaluation.experiment import run_experiment

    return run_experiment(out, pool, curated, heldout, config, train,
                          evaluate_config=EvaluateConfig(batch_size=8))


def test_evaluate_run_with_judge(split, tiny_llama_dir, tmp_path, fake_teacher):
    """Generation + a position-biased judge through the real client: every pair is a tie (win rate 0.5)."""
    from peft import LoraConfig, get_peft_model

    from evaluation.experiment import evaluate_run
    from evaluation.metrics import load_for_eval
    from tests.test_eval_judge import _verdict_reply

    base, _ = load_for_eval(tiny_llama_dir, "lora", "fp32")
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter")
    fake_teacher.answer = _verdict_reply(lambda a, b: "A")
    _, _, heldout = split
    heldout.write_parquet(tmp_path / "heldout.parquet")
    train = TrainConfig(student=str(tiny_llama_dir), method="lora", max_seq_len=64, compute_dtype="fp32", threads=2)
    config = EvaluateConfig(n_generate=3, max_new_tokens=4, judge="j", bootstrap_resamples=200)
    out = evaluate_run(tmp_path, tmp_path / "adapter", None, config, train, teachers=Teachers({"j": fake_teacher.config()}))
    assert out["heldout_source"].endswith("heldout.parquet")
    assert out["adapter"]["judge_win_rate"] == 0.5 and out["adapter"]["judge_win_rate_rows"] == 3
    assert fake_teacher.chat_requests() == 6  # 3 prompts x both orders
    assert "judge_win_rate" in out["intervals"]
    assert "Judge (j, both orders asked" in (tmp_path / "report.md").read_text()
    # random (non-zero) LoRA weights change the model: the loss differs from the base model's
    assert out["adapter"]["heldout_loss"] != out["base_model"]["heldout_loss"]
    # a rerun with the same adapter and rows reuses the finished evaluation: nothing scored, nothing asked
    import evaluation.evaluate as ev

    real, ev.score_model = ev.score_model, None
    try:
        assert evaluate_run(tmp_path, tmp_path / "adapter", None, config, train,
                            teachers=Teachers({"j": fake_teacher.config()})) == out
    finally:
        ev.score_model = real
    assert fake_teacher.chat_requests() == 6
    # another adapter is evaluated again
    get_peft_model(load_for_eval(tiny_llama_dir, "lora", "fp32")[0],
                   LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter")
    again = evaluate_run(tmp_path, tmp_path / "adapter", None, config, train, teachers=Teachers({"j": fake_teacher.config()}))
    assert again["key"]["adapter"] != out["key"]["adapter"] and again["adapter"] != out["adapter"]


def _fake_scores(ids, loss_per_token, judge=None, tokens=10):
    n = len(ids)
    return pl.DataFrame({"id": ids, "nll": np.asarray(loss_per_token, dtype=float) * tokens,
                         "tokens": np.full(n, tokens, dtype=np.int64), "answer": [None] * n,
                         "judge": np.full(n, np.nan) if judge is None else np.asarray(judge, dtype=float),
                         "grade": np.full(n, np.nan), "exact_match": np.full(n, np.nan),
                         "token_f1": np.full(n, np.nan)})


def assert_nothing_covers_the_data(summary: dict) -> None:
    """The plot's legend lies outside both panels (it covered an interval bar at matplotlib's `loc="best"`), and
    the left panel's tick labels do not overlap one another."""
    import matplotlib.pyplot as plt

    from evaluation.report import plot_figure

    fig = plot_figure(summary, "t")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,), (ax, dx) = fig.legends, fig.axes
    assert [t.get_text() for t in legend.get_texts()] == [f"{a['name']} ({a['profile']['rows']} rows)"
                                                          for a in summary["arms"]] + ["base model (no training)"]
    box = legend.get_window_extent(renderer)
    for panel in (ax, dx):
        assert not box.overlaps(panel.get_window_extent(renderer)), panel.get_title()
    labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    sizes = {a["profile"]["rows"] for a in summary["arms"]}
    # the arms' names on equal sizes, else each size that an arm has
    assert {t.get_text() for t in labels} == ({a["name"] for a in summary["arms"]} if len(sizes) == 1
                                              else {str(r) for r in sizes})
    ticks = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
    # each arm's bar stands at its own x (arms of one size among others are set apart), and no name overlaps another
    xs = [bar.lines[0].get_xdata()[0] for bar in ax.containers]
    assert len(xs) == len(summary["arms"]) == len(set(xs))
    names = [t.get_window_extent(renderer) for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(names) for b in names[i + 1:])
    plt.close(fig)


def test_aggregate_report_and_plot_from_known_scores(split, tmp_path):
    """Arm `good` is 0.3 nats better than `full` on every row: it must win, with an interval excluding 0."""
    from evaluation.report import aggregate, write_plot, write_report
    from evaluation.scoring import prepare_heldout

    _, _, heldout = split
    held = prepare_heldout(heldout, EvaluateConfig())
    rng = np.random.default_rng(0)
    row = rng.normal(2.0, 0.5, held.height)
    ids = held["id"].to_list()
    seeds = lambda shift, judge=None: [  # noqa: E731
        {"seed": s, "train": {"train_seconds": 1.0, "answer_tokens_seen": 100, "steps": 5},
         "scores": _fake_scores(ids, row + shift + rng.normal(0, 0.01, held.height), judge)} for s in (0, 1)]
    prof = {"rows": 10, "answer_chars_mean": 1.0, "structured_share": 0.5}
    arms = [{"name": "good", "data": "curated", "profile": prof, "plan": {"rows_per_step": 2}, "rows": 10,
             "seeds": seeds(-0.3, judge=np.ones(held.height))},
            {"name": "full", "data": "full", "profile": {**prof, "rows": 100}, "plan": {"rows_per_step": 2},
             "rows": 100, "seeds": seeds(0.0, judge=np.full(held.height, 0.5))}]
    summary = aggregate(arms, _fake_scores(ids, row + 0.5), held, metric="heldout_loss", baseline="full",
                        slices=["structured", "turns"], resamples=500, confidence=0.95)
    good = summary["arms"][0]
    assert summary["verdict"]["winner"] == "good" and summary["verdict"]["excludes_zero"] is True
    assert good["vs_full"]["heldout_loss"]["mean"] == pytest.approx(-0.3, abs=0.01)
    assert good["vs_full"]["heldout_loss"]["high"] < 0
    assert good["vs_base_model"]["heldout_loss"]["mean"] == pytest.approx(-0.8, abs=0.01)
    assert "judge_win_rate" in summary["metrics_available"]  # the base model has no judge score; arms do
    assert good["metrics"]["judge_win_rate"]["mean"] == 1.0
    assert "excludes zero" in summary["verdict"]["sentence"]
    write_report(tmp_path / "report.md", summary, title="t", heldout_source="raw pool draw", notes=[])
    text = (tmp_path / "report.md").read_text()
    assert "`good` won" in text and "raw pool draw" in text and "judge_win_rate" in text
    write_plot(tmp_path / "plot.png", summary, "t")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert_nothing_covers_the_data(summary)
    # a third arm of the curated arm's size (as random_n and longest_n are) beside the bigger `full`
    third = {**arms[0], "name": "random_n", "seeds": seeds(-0.1)}
    assert_nothing_covers_the_data(aggregate(arms + [third], _fake_scores(ids, row + 0.5), held, metric="heldout_loss",
                                             baseline="full", slices=[], resamples=200, confidence=0.95))
    same_rows = [{**a, "profile": prof, "rows": 10} for a in arms]  # as in the demo: arms side by side, not by rows
    assert_nothing_covers_the_data(aggregate(same_rows, _fake_scores(ids, row + 0.5), held, metric="heldout_loss",
                                             baseline="full", slices=[], resamples=200, confidence=0.95))

    # The same arms with the difference reversed: `full` wins and the runner-up sentence says so.
    arms[0]["seeds"] = seeds(+0.3)
    flipped = aggregate(arms, _fake_scores(ids, row), held, metric="heldout_loss", baseline="full",
                        slices=[], resamples=500, confidence=0.95)
    assert flipped["verdict"]["winner"] == "full" and "runner-up `good`" in flipped["verdict"]["sentence"]


def test_evaluate_run_with_a_benchmark(split, tiny_llama_dir, tmp_path, fake_teacher):
    """A two-turn prompt file answered by the base model and the adapter (transformers), graded and compared
    through the real client; the rerun generates nothing and sends nothing."""
    import re

    from peft import LoraConfig, get_peft_model

    from evaluation.experiment import evaluate_run
    from evaluation.metrics import load_for_eval

    base, _ = load_for_eval(tiny_llama_dir, "lora", "fp32")
    get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(
        tmp_path / "adapter")
    prompts = tmp_path / "bench.jsonl"
    prompts.write_text(json.dumps({"question_id": "q1", "category": "math", "turns": ["What is 2+2?", "And 3+3?"],
                                   "reference": ["4", "6"]}) + "\n" +
                       json.dumps({"question_id": "q2", "category": "writing", "turns": ["A haiku.", "Another."]}) + "\n")
    seen = []

    def judge(body):
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        if "[Answer A]" in prompt:
            content = {"winner": "A"}  # position bias: A in both orders, so every pair is a tie
        else:
            content = {"score": 7 if "(A reference answer" in prompt else 3}
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(content)},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                                                                  "total_tokens": 13}}

    fake_teacher.answer = judge
    _, _, heldout = split
    train = TrainConfig(student=str(tiny_llama_dir), method="lora", max_seq_len=64, compute_dtype="fp32", threads=2)
    config = EvaluateConfig(benchmark=str(prompts), judge="j", generation="transformers", max_new_tokens=4,
                            judge_reason_chars=0, bootstrap_resamples=200)
    out = evaluate_run(tmp_path / "run", tmp_path / "adapter", heldout, config, train,
                       teachers=Teachers({"j": fake_teacher.config()}))
    answers = pl.read_parquet(tmp_path / "run" / "benchmark" / "graded.parquet")
    assert answers.height == 8 and set(answers["model"]) == {"base", "adapter"}
    assert sorted(answers["grade"].unique().to_list()) == [3.0, 7.0]  # the math turns carried the reference
    g = out["benchmark"]["groups"]["adapter"]
    assert g["grade"]["mean"] == 5.0 and g["minus"]["base"]["mean"] == 0.0
    assert g["win_rate"]["mean"] == 0.5 and g["pairs"]["ties"] == 4
    assert set(g["by_category"]) == {"math", "writing"}
    assert fake_teacher.chat_requests() == 8 + 8  # 8 grades, 4 pairs x both orders
    assert any(re.search(r"\(Conversation so far", p) for p in seen)  # turn 2 is judged with turn 1 before it
    assert "## Benchmark" in (tmp_path / "run" / "report.md").read_text()

    import evaluation.benchmark_eval as bench

    def no_generation(*a, **k):
        raise AssertionError("answers are reused on a rerun")

    real = bench.generate_all
    bench.generate_all = no_generation
    try:
        again = evaluate_run(tmp_path / "run", tmp_path / "adapter", heldout, config, train,
                             teachers=Teachers({"j": fake_teacher.config()}))
    finally:
        bench.generate_all = real
    assert fake_teacher.chat_requests() == 16  # every judgment came from the cache
    assert again["benchmark"] == out["benchmark"]
