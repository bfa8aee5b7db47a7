"""curation.drift's tests and the retrain rule, on their own (fast; the end-to-end ones are in
test_update_drift.py)."""
from __future__ import annotations

import numpy as np
import pytest

from curation import drift
from pond.recipe import RecipeError, parse_recipe
from pond.retrain import rule
from pond.retrain_config import RetrainConfig


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mmd_permutation_test_separates_shifted_samples_only():
    rng = np.random.default_rng(0)
    a, b = _unit(rng.normal(size=(150, 16))), _unit(rng.normal(size=(120, 16)))
    same = drift.mmd_test(a, b, permutations=199, seed=0)
    assert same["p_value"] > 0.05
    shifted = _unit(rng.normal(size=(120, 16)) + np.r_[1.5, np.zeros(15)])
    moved = drift.mmd_test(a, shifted, permutations=199, seed=0)
    assert moved["p_value"] == moved["smallest_possible_p"] == 1 / 200
    assert moved["mmd2"] > same["mmd2"]
    # the p-value is a valid one under the null: over many same-source pairs about 5% fall below 0.05
    ps = [drift.mmd_test(_unit(rng.normal(size=(40, 8))), _unit(rng.normal(size=(40, 8))), permutations=99,
                         seed=s)["p_value"] for s in range(60)]
    assert 0 <= sum(p < 0.05 for p in ps) <= 9


def test_rejection_rates_tested_by_fisher_only_for_comparable_steps():
    earlier = {"01-heuristics": [(10, 100), (25, 200)], "02-exact_dedup": [(5, 300)]}  # pooled 35 / 300
    flags = drift.rejection_flags({"01-heuristics": (13, 100)}, earlier, tested=["01-heuristics"])
    assert not flags["01-heuristics"]["flagged"] and flags["01-heuristics"]["earlier_rate"] == round(35 / 300, 4)
    assert drift.rejection_flags({"01-heuristics": (40, 100)}, earlier, tested=["01-heuristics"])["01-heuristics"]["flagged"]
    assert drift.rejection_flags({"03-new": (5, 10)}, earlier, tested=["03-new"])["03-new"]["flagged"] is False
    # a dedup step's rate depends on how much it is compared against: reported, never tested
    dedup = drift.rejection_flags({"02-exact_dedup": (60, 100)}, earlier, tested=["01-heuristics"])["02-exact_dedup"]
    assert dedup["tested"] is False and dedup["flagged"] is False and dedup["rate"] == 0.6


def test_rejection_flag_false_alarm_rate_is_at_most_its_level():
    """Same rate on both sides: a pond of 1200 rows, drops of 500. The interval around the pond's rate
    taken as exact (before issue 32) flagged ~3% at a nominal 1%; Fisher's test stays under 1%."""
    rng = np.random.default_rng(0)
    trials = 400
    hits = sum(drift.rejection_flags({"s": (int(rng.binomial(500, 0.2)), 500)},
                                     {"s": [(int(rng.binomial(1200, 0.2)), 1200)]}, tested=["s"])["s"]["flagged"]
               for _ in range(trials))
    assert hits <= 9  # binomial(400, 0.01): P(X >= 10) < 0.01


def test_language_test_false_alarm_rate_is_at_most_alpha():
    """Many rare languages, as in real chat data (small expected counts, where chi-square is an
    approximation): over same-source pairs about 5% fall below 0.05, not more."""
    rng = np.random.default_rng(0)
    names = np.array(["en"] * 90 + ["zh", "es", "de", "fr", "ja", "ko", "ru", "pt", "it", "nl"])
    ps = [drift.language_mix(list(rng.choice(names, 300)), list(rng.choice(names, 150)))["p_value"]
          for _ in range(200)]
    assert sum(p < 0.05 for p in ps) <= 18  # binomial(200, 0.05): P(X >= 19) < 0.01


def test_the_compared_stage_ends_before_the_first_step_that_needs_other_rows(tmp_path):
    from pond.drift_report import compared_stage

    def gen(*names):
        d = tmp_path / "-".join(names)
        for n in ("00-ingest",) + names:
            (d / "steps" / n).mkdir(parents=True)
        return d

    # a drop's dedup runs against the pond: what comes after it is not a sample of the source
    assert compared_stage(gen("01-heuristics", "02-pii", "03-exact_dedup", "04-judge")) == [
        "00-ingest", "01-heuristics", "02-pii"]
    assert compared_stage(gen("01-exact_dedup", "02-minhash_dedup", "03-heuristics")) == ["00-ingest"]
    # the run draws its held-out rows from the valid ones, a drop draws none
    assert compared_stage(gen("01-holdout", "02-heuristics")) == ["00-ingest"]
    assert compared_stage(gen("01-heuristics", "02-select")) == ["00-ingest", "01-heuristics"]
    assert compared_stage(gen("01-heuristics")) == ["00-ingest", "01-heuristics"]


def test_language_and_length_shift():
    english = ["The weather is nice today and we will walk to the park."] * 30
    german = ["Das Wetter ist heute schön und wir gehen in den Park spazieren."] * 30
    mix = drift.language_mix(drift.languages(english), drift.languages(german))
    assert mix["pond"] == {"en": 1.0, "de": 0.0} and mix["p_value"] < 1e-6
    assert drift.length_shift([10] * 30 + [12] * 30, [200] * 40)["p_value"] < 1e-6


def test_batched_languages_are_langids_own(sharegpt_df):
    import langid

    texts = sharegpt_df["text"].head(300).to_list() + [
        "Das Wetter ist heute schön.", "Il fait beau aujourd'hui.", "今日はいい天気です。", "", "   ", None]
    expected = [langid.classify(t[:200])[0] if t and t[:200].strip() else "" for t in texts]
    assert drift.languages(texts, batch=64) == expected
    assert len(set(expected)) > 3


def test_the_stable_sample_of_a_union_is_drawn_from_its_parts_samples():
    """What lets each generation keep its own drift sample: the union's sample is among the parts' samples."""
    ids = [f"row-{i}" for i in range(5000)]
    parts = [ids[:1200], ids[1200:1300], ids[1300:]]
    keys = [drift.sample_keys(p, 7) for p in parts]
    picked = [drift.smallest(k, 500) for k in keys]
    candidates = [p[i] for p, chosen in zip(parts, picked) for i in chosen]
    union = drift.smallest(np.concatenate([k[chosen] for k, chosen in zip(keys, picked)]), 500)
    assert [candidates[i] for i in union] == [ids[i] for i in drift.stable_sample(ids, 500, 7)]
    assert len(union) == 500 and drift.stable_sample(ids[:300], 500, 7).tolist() == list(range(300))


def test_new_and_gone_clusters():
    rng = np.random.default_rng(1)
    centres = _unit(rng.normal(size=(3, 16)) * 5)
    pond = _unit(np.vstack([centres[0] + rng.normal(scale=0.05, size=(50, 16)),
                            centres[1] + rng.normal(scale=0.05, size=(50, 16))]))
    new = _unit(np.vstack([centres[0] + rng.normal(scale=0.05, size=(30, 16)),
                           centres[2] + rng.normal(scale=0.05, size=(30, 16))]))
    out = drift.cluster_changes(pond, new, ["pond"] * 100, ["old"] * 30 + ["fresh"] * 30, k=3, seed=0)
    assert [c["examples"][0] for c in out["new"]] == ["fresh"]
    assert len(out["gone"]) == 1 and out["gone"][0]["pond_share"] == 0.5


def test_retrain_rule_any_and_all():
    cfg = RetrainConfig.model_validate({"when": {"new_rows": 100, "drift_p": 0.01}, "any": True})
    assert rule(cfg, 50, {"p_value": 0.5})["fired"] is False
    assert rule(cfg, 150, {"p_value": 0.5})["fired"] is True
    assert rule(cfg, 10, {"p_value": 0.002})["fired"] is True
    every = cfg.model_copy(update={"any": False})
    assert rule(every, 150, {"p_value": 0.5})["fired"] is False
    assert rule(every, 150, {"p_value": 0.002})["fired"] is True
    assert rule(RetrainConfig(), 10**6, {"p_value": 0.0})["fired"] is False  # no condition, no retraining
    loss = RetrainConfig.model_validate({"when": {"loss_increase": 0.05}})
    assert rule(loss, 0, {"adapter_loss": {"skipped": "no adapter yet"}})["fired"] is False
    assert rule(loss, 0, {"adapter_loss": {"relative_increase": 0.2}})["fired"] is True


def test_retrain_section_errors_name_line_and_key():
    text = "name: x\ninput: {path: a.jsonl}\nretrain:\n  when: {new_rowz: 5}\n"
    with pytest.raises(RecipeError, match=r"<recipe>:4: retrain\.when\.new_rowz: unknown key"):
        parse_recipe(text)
    assert parse_recipe(text.replace("new_rowz", "new_rows")).retrain.when.new_rows == 5
