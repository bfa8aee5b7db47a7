"""`select` with `mix`: answer tokens counted as training counts them, each source filled to its
share of the budget in the strategy's order, and every bad setting refused in one line."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from curation.answer_tokens import answer_tokens, load_tokenizer
from curation.settings import DEFAULT_MAX_SEQ_LEN, DEFAULT_STUDENT
from curation.errors import ConfigError, ModelNotFound
from curation.mixing import mix_select, take_count
from curation.selection import SelectOptions, choose, select
from curation.settings import resolve_model
from curation.step import StepContext
from training.data import IGNORE, tokenize_conversations

WEIGHTS = {"sharegpt": 0.7, "fortunes": 0.3}


@pytest.fixture(scope="module")
def student_dir():
    try:
        return resolve_model(DEFAULT_STUDENT)
    except ModelNotFound:
        pytest.skip("the student (SmolLM2) is not prepared: python scripts/prepare_models.py")


@pytest.fixture(scope="module")
def pool(sharegpt_df, fortunes_df) -> pl.DataFrame:
    """Two real sources: ShareGPT conversations (long answers, some cut to nothing at 256 tokens) and
    1000 Debian fortunes (short plain text), with a score that is not length."""
    fortunes = fortunes_df.sample(1000, seed=3).with_columns(pl.lit("fortunes").alias("source"))
    df = pl.concat([sharegpt_df.select(fortunes.columns), fortunes])
    return df.with_columns(pl.Series("quality", np.random.default_rng(0).random(df.height)))


def training_counts(df: pl.DataFrame, tokenizer, max_seq_len: int) -> np.ndarray:
    """What evaluation.arms.profile counts for the equal_tokens budget: labels in the loss, after the first."""
    enc = tokenize_conversations(df, tokenizer, max_seq_len)
    return np.array([sum(t != IGNORE for t in r["labels"][1:]) for r in enc], dtype=np.int64)


class Slow:
    """A tokenizer without offsets (is_fast False) over a fast one: training's piece-by-piece path."""

    is_fast = False

    def __init__(self, fast):
        self._fast = fast

    def __getattr__(self, name):
        return getattr(self._fast, name)

    def __call__(self, *args, **kwargs):
        return self._fast(*args, **kwargs)


def _mix(df, cache, budget, weights=WEIGHTS, model=None, seed=0, **opts):
    ctx = StepContext(cache_dir=cache, seed=seed)
    mix = {"by": "source", "weights": weights, **opts.pop("mix", {})}
    kept, rejected = select(df, SelectOptions(mix=mix, budget_tokens=budget, model=model, **opts), ctx)
    assert len(df) == len(kept) + len(rejected)
    assert not set(kept["id"]) & set(rejected["id"])
    return kept, rejected, ctx.stats


def test_defaults_are_the_training_defaults():
    from training.config import TrainConfig

    assert (DEFAULT_STUDENT, DEFAULT_MAX_SEQ_LEN) == (TrainConfig().student, TrainConfig().max_seq_len)


@pytest.mark.parametrize("max_seq_len", [24, 256, 4096])
def test_answer_tokens_are_what_training_trains_on(pool, student_dir, tiny_llama_dir, max_seq_len):
    rows = pl.concat([pool.filter(pl.col("source") == "sharegpt").head(40), pool.tail(20)])
    for folder in (student_dir, tiny_llama_dir):
        tok = load_tokenizer(str(folder))
        expected = training_counts(rows, tok, max_seq_len)
        assert answer_tokens(rows, tok, max_seq_len).tolist() == expected.tolist()
        assert answer_tokens(rows, Slow(tok), max_seq_len).tolist() == training_counts(rows, Slow(tok),
                                                                                         max_seq_len).tolist()
        if max_seq_len == 24:
            assert (expected == 0).any()  # a prompt longer than the cut leaves no answer token


def test_the_walk_stops_at_the_first_row_that_moves_away_from_the_share():
    t = np.array([40, 30, 50])
    assert take_count(t, 100) == 3  # 70 + 50 = 120: 20 over is closer than 30 under
    assert take_count(t, 90) == 2  # 70 + 50 = 120: 30 over is farther than 20 under
    assert take_count(t, 95) == 3  # 25 under or 25 over: a tie is taken
    assert take_count(np.array([40, 100, 5]), 60) == 1  # the 5 behind the 100 is not taken ahead of it
    assert take_count(t, 1000) == 3 and take_count(t, 0) == 0


@pytest.mark.parametrize("strategy", ["random", "longest", "quality"])
def test_delivered_shares_on_a_real_two_source_pool(pool, student_dir, tmp_path, strategy):
    budget = 20_000
    kept, rejected, stats = _mix(pool, tmp_path, budget, model=str(student_dir), strategy=strategy)
    tok = load_tokenizer(str(student_dir))
    per_source = {}
    for name, weight in WEIGHTS.items():
        rows = kept.filter(pl.col("source") == name)
        delivered = int(training_counts(rows, tok, DEFAULT_MAX_SEQ_LEN).sum())  # recounted as training does
        assert delivered == stats["mix"]["sources"][name]["answer_tokens_delivered"]
        assert rows["answer_tokens"].sum() == delivered
        assert abs(delivered - weight * budget) <= rows["answer_tokens"].max() / 2
        per_source[name] = delivered
    total = sum(per_source.values())
    for name, weight in WEIGHTS.items():
        share = per_source[name] / total
        assert share == pytest.approx(stats["mix"]["sources"][name]["share_delivered"], abs=1e-6)
        assert abs(share - weight) <= 0.02, (strategy, name, share)
    print(strategy, {k: round(v / total, 4) for k, v in per_source.items()}, total)
    assert stats["answer_tokens_selected"] == total and stats["selected"] == len(kept)
    assert (kept["answer_tokens"] > 0).all()


def test_rows_follow_the_strategy_within_each_source(pool, student_dir, tmp_path):
    kept, rejected, stats = _mix(pool, tmp_path, 20_000, model=str(student_dir), strategy="quality")
    for name in WEIGHTS:
        mine = pool.filter(pl.col("source") == name)
        taken = kept.filter(pl.col("source") == name)
        eligible = rejected.filter(pl.col("source") == name, pl.col("reason").str.contains("met its share"))
        assert taken["quality"].min() > eligible["quality"].max()  # the best-scored rows, walked from the top
        assert stats["mix"]["sources"][name]["rows_available"] <= mine.height
    reasons = set(rejected["reason"])
    assert "not_selected: mix: no answer tokens within max_seq_len 256" in reasons  # long ShareGPT prompts
    assert any(r.startswith("not_selected: mix by source: 'sharegpt' met its share (") for r in reasons)
    assert set(rejected["stage"]) == {"select"} and set(rejected.columns) == set(pool.columns) | {"stage", "reason"}


def test_every_prefix_of_the_ranking_is_close_to_the_mix(pool, student_dir, tmp_path):
    kept, _, _ = _mix(pool, tmp_path, 20_000, model=str(student_dir))
    ranked = kept.sort("select_rank")
    cum = ranked.with_columns((pl.col("answer_tokens") * (pl.col("source") == "sharegpt")).cum_sum().alias("s"),
                              pl.col("answer_tokens").cum_sum().alias("all"))
    half = cum.filter(pl.col("all") >= 10_000).row(0, named=True)
    assert abs(half["s"] / half["all"] - 0.7) < 0.03


@pytest.mark.parametrize("strategy", ["quality", "quality_diverse", "kcenter"])
def test_asking_for_more_rows_only_extends_the_order(pool, tiny_llama_dir, tmp_path, strategy):
    """Mixing asks a strategy for a first guess of rows and then more; the rows it takes are those of
    the whole order's walk."""
    rows = pool.filter(pl.col("source") == "fortunes").head(160)
    opts = SelectOptions(mix={"weights": {"fortunes": 1.0}}, budget_tokens=600, model=str(tiny_llama_dir),
                         strategy=strategy, threshold=0.6)

    def run(grows: bool) -> pl.DataFrame:
        ctx = StepContext(cache_dir=tmp_path, seed=1)
        order = lambda sub, n: choose(sub, opts.model_copy(update={"n": n}), ctx)  # noqa: E731
        return mix_select(rows, opts, ctx, order, grows, "select")[0]

    grown = run(True)
    assert grown.equals(run(False)) and 0 < len(grown) < len(rows) / 2


def test_a_short_source_is_one_line_or_taken_whole_when_allowed(pool, tiny_llama_dir, tmp_path):
    small = pl.concat([pool.filter(pl.col("source") == "sharegpt").head(300), pool.tail(5)])
    with pytest.raises(ConfigError) as err:
        _mix(small, tmp_path, 20_000, model=str(tiny_llama_dir))
    assert "\n" not in str(err.value)
    assert "'fortunes' has" in str(err.value) and "fewer than its share 0.3 x 20000 = 6000" in str(err.value)
    assert "allow_short: true" in str(err.value)
    kept, _, stats = _mix(small, tmp_path, 20_000, model=str(tiny_llama_dir), mix={"allow_short": True})
    fortunes = stats["mix"]["sources"]["fortunes"]
    assert fortunes["short"] and fortunes["rows_delivered"] == fortunes["rows_available"] == 5
    assert fortunes["answer_tokens_delivered"] == fortunes["answer_tokens_available"] < 6000
    assert not stats["mix"]["sources"]["sharegpt"]["short"]


def test_a_source_without_a_weight_is_not_selected_and_says_so(pool, tiny_llama_dir, tmp_path):
    kept, rejected, stats = _mix(pool, tmp_path, 3000, weights={"fortunes": 1.0}, model=str(tiny_llama_dir))
    assert set(kept["source"]) == {"fortunes"} and list(stats["mix"]["sources"]) == ["fortunes"]
    assert set(rejected.filter(pl.col("source") == "sharegpt")["reason"]) == {
        "not_selected: mix by source: 'sharegpt' has no weight"}


@pytest.mark.parametrize("mix, budget, message", [
    ({"weights": {"sharegpt": 0.7, "fortunes": 0.2}}, 100, "mix.weights sum to 0.9, not 1"),
    ({"weights": {"sharegpt": 1.5, "fortunes": -0.5}}, 100, "'fortunes' below 0"),
    ({"weights": {}}, 100, "at least one"),
    ({"weights": {"sharegpt": 1.0}}, None, "mix needs budget_tokens"),
])
def test_bad_weights_are_one_line_each(mix, budget, message):
    with pytest.raises(ValidationError, match=message) as err:
        SelectOptions(mix=mix, budget_tokens=budget)
    assert len(err.value.errors()) == 1 and "\n" not in err.value.errors()[0]["msg"]


def test_the_counting_options_need_a_mix_and_n_excludes_it():
    with pytest.raises(ValidationError, match="budget_tokens, max_seq_len: only with mix"):
        SelectOptions(n=5, budget_tokens=100, max_seq_len=512)
    with pytest.raises(ValidationError, match="n and mix exclude each other"):
        SelectOptions(n=5, mix={"weights": {"a": 1}}, budget_tokens=100)
    with pytest.raises(ValidationError, match="n: required"):
        SelectOptions()
    assert SelectOptions(n=5).estimated_rows_out(9) == 5
    assert SelectOptions(mix={"weights": {"a": 1}}, budget_tokens=9).estimated_rows_out(9) == 9


def test_unknown_sources_and_columns_are_one_line(pool, tmp_path):
    with pytest.raises(ConfigError) as err:
        _mix(pool, tmp_path, 100, weights={"sharegpt": 0.5, "wiki": 0.5})
    assert str(err.value) == ("select mix.weights: 'wiki' not found in column 'source' "
                              "(sources present: 'fortunes', 'sharegpt')")
    with pytest.raises(ConfigError, match=r"select mix.by: no column 'origin' \(columns: id, messages"):
        _mix(pool, tmp_path, 100, mix={"by": "origin"})


def test_a_recipe_names_the_key_in_one_line(tmp_path):
    from pond.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as err:
        parse_recipe("name: t\ninput: {path: rows.jsonl}\nsteps:\n"
                     "  - select: {mix: {weights: {a: 0.5, b: 0.4}}, budget_tokens: 100}\n", "t.yaml")
    assert str(err.value) == "t.yaml:4: steps[0].select.mix.weights: Value error, mix.weights sum to 0.9, not 1: " \
                             "each is its source's share of budget_tokens"


def test_a_run_writes_the_mix_to_stats_and_fails_a_short_source_in_one_line(tmp_path, tiny_llama_dir):
    import json

    from pond.recipe import parse_recipe
    from pond.runner import Runner, StepFailed

    (tmp_path / "data").mkdir()
    for name, rows in (("a", 30), ("b", 10)):
        (tmp_path / "data" / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": f"count to {i}", "response": " ".join(["one two three"] * (1 + i % 4))}) + "\n"
            for i in range(rows)))

    def run(budget: int, folder: str):
        recipe = parse_recipe(f"name: t\ninput: {{path: data}}\nsteps:\n  - select: {{mix: {{weights: "
                              f"{{data/a.jsonl: 0.75, data/b.jsonl: 0.25}}}}, budget_tokens: {budget}, "
                              f"model: {tiny_llama_dir}}}\n", "t.yaml")
        return Runner(recipe, tmp_path / folder, tmp_path, cache_dir=tmp_path / "cache").curate()

    run(400, "ok")
    stats = json.loads(next((tmp_path / "ok" / "steps").glob("*select/stats.json")).read_text())
    sources = stats["mix"]["sources"]
    assert sources["data/a.jsonl"]["answer_tokens_asked"] == 300 and sources["data/b.jsonl"]["short"] is False
    with pytest.raises(StepFailed) as err:
        run(4000, "short")
    assert "\n" not in str(err.value) and "'data/b.jsonl' has" in str(err.value)


def test_a_select_without_mix_keeps_its_fingerprint():
    """The runner chains the options' JSON into a step's fingerprint: a select without mix dumps exactly
    as before mix existed, so earlier runs resume; with mix every counting option is in it."""
    assert SelectOptions(n=5).model_dump_json() == (
        '{"n":5,"strategy":"random","score_column":"quality","threshold":0.85,"relax_step":0.02,"column":"text",'
        '"seed":null,"embedding":{"model":null,"precision":"auto","max_seq_length":null,"batch_size":64,'
        '"chunk_size":2048,"threads":null,"device":null,"fuse_kernels":true,"cache":true}}')
    mixed = SelectOptions(mix={"weights": {"a": 1}}, budget_tokens=5)
    assert {"mix", "budget_tokens", "model", "max_seq_len"} <= set(mixed.model_dump())
    assert SelectOptions.model_validate(mixed.model_dump()) == mixed
