"""The experiment arm `curated+dpo` against `curated` (issue #31): per seed, the curated arm's SFT adapter is
trained on with DPO on the curated set's preference pairs, and scored like every other arm. Trains for real on
the tiny random Llama (tests/fixtures_models.py), on the repeat-a-word pairs of tests/test_dpo.py."""
from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from curation.errors import ConfigError
from curation.store import file_digest
from evaluation.config import ArmConfig, EvaluateConfig, ExperimentConfig
from tests.test_dpo import _rows
from training.config import TrainConfig

DPO_ARM = ArmConfig(name="curated+dpo", data="curated+dpo", dpo={"lr": 1e-3, "max_steps": 4})


def _heldout(n: int = 8) -> pl.DataFrame:
    rows = _rows(n + 3).tail(n)  # the same task, other word/count pairs first
    return rows.select("messages", "source").with_columns(id=pl.format("h{}", pl.int_range(pl.len())))


def _train(student) -> TrainConfig:
    return TrainConfig(student=str(student), method="lora", batch_size=4, max_seq_len=64, lr=5e-3, warmup_ratio=0.0,
                       compute_dtype="fp32", threads=2, save_steps=100)


def _experiment(out, curated, config, student):
    from evaluation.experiment import run_experiment

    return run_experiment(out, curated, curated, _heldout(), config, _train(student),
                          evaluate_config=EvaluateConfig(batch_size=8, bootstrap_resamples=200))


def test_curated_dpo_goes_on_from_the_curated_arms_adapter_and_is_scored_like_it(tiny_llama_dir, tmp_path,
                                                                                  monkeypatch):
    curated = _rows(24)  # 16 rows carry a pair
    config = ExperimentConfig(arms=[DPO_ARM, ArmConfig(name="curated", data="curated")], baseline="curated",
                              budget="equal_tokens", steps=3, seeds=[0, 1], bootstrap_resamples=200, mlflow=False)
    out = tmp_path / "exp"
    _experiment(out, curated, config, tiny_llama_dir)
    data = json.loads((out / "experiment.json").read_text())

    dpo, cur = data["arms"]
    assert (dpo["name"], cur["name"]) == ("curated+dpo", "curated")
    assert dpo["rows"] == 16 and cur["rows"] == 24
    # the first arm named the token reference: it stands for the curated arm, whose SFT steps it reuses
    assert cur["plan"]["max_steps"] == 3 and dpo["plan"]["max_steps"] == 3 and dpo["plan"]["sft_from"] == "curated"
    assert dpo["plan"]["dpo"] == {"max_steps": 4, "epochs": 1.0, "beta": 0.1, "lr": 1e-3, "pairs": 16}
    for s in (0, 1):
        sft_dir, dpo_dir = out / "arms" / "curated" / f"seed-{s}", out / "arms" / "curated+dpo" / f"seed-{s}"
        train = dpo["seeds"][s]["train"]
        assert train["sft"]["adapter_dir"] == str(sft_dir / "adapter")  # the same seed's curated adapter
        assert (train["dpo"]["steps"], train["sft"]["steps"], train["steps"]) == (4, 3, 7)
        assert train["answer_tokens_seen"] == train["sft"]["answer_tokens_seen"] + train["dpo"]["answer_tokens_seen"]
        assert not (dpo_dir / "sft").exists()  # reused, not trained again
        key = json.loads((dpo_dir / "train-key.json").read_text())
        assert key["sft_adapter_hash"] == file_digest(sft_dir / "adapter" / "adapter_model.safetensors")
        assert key["config"]["method"] == "dpo" and key["config"]["dpo"]["base_method"] == "lora"
        result = json.loads((dpo_dir / "train-result.json").read_text())["result"]
        assert result["losses"][0] == pytest.approx(0.6931, abs=1e-3)  # the curated adapter is the reference
        a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (sft_dir, dpo_dir))
        assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
        assert "tags: [pond, lora, sft, dpo]" in (dpo_dir / "adapter" / "README.md").read_text()
    # the same metrics as every arm, and the paired difference from curated
    m, c = dpo["metrics"]["heldout_loss"], cur["metrics"]["heldout_loss"]
    assert len(m["per_seed"]) == len(c["per_seed"]) == 2 and m["per_seed"] != c["per_seed"]
    d = dpo["vs_curated"]["heldout_loss"]
    assert d["low"] <= d["mean"] <= d["high"]
    assert d["mean"] == pytest.approx(m["mean"] - c["mean"], abs=1e-9)
    report = (out / "report.md").read_text()
    assert "| `curated+dpo` | curated+dpo | 16 | 3 SFT + 4 DPO | 1.00 over the pairs |" in report
    assert "`curated+dpo`: the `curated` arm's SFT adapter of the same seed, trained on with DPO" in report

    # Resumed: nothing trained or scored again
    import evaluation.experiment as experiment
    import training.dpo
    import training.trainer

    def boom(*a, **k):
        raise AssertionError("should not run on resume")

    for module, name in ((training.trainer, "train"), (training.dpo, "train_dpo"), (experiment, "score_model")):
        monkeypatch.setattr(module, name, boom)
    again = _experiment(out, curated, config, tiny_llama_dir)
    assert again["arms"][0]["metrics"] == data["arms"][0]["metrics"]


def test_a_curated_set_without_pairs_is_one_line_before_any_training(tiny_llama_dir, tmp_path):
    curated = _rows(12).drop("prompt", "chosen", "rejected")
    config = ExperimentConfig(arms=[ArmConfig(name="curated", data="curated"), DPO_ARM], baseline="curated",
                              budget="equal_steps", steps=2, seeds=[0], mlflow=False)
    with pytest.raises(ConfigError) as err:
        _experiment(tmp_path / "exp", curated, config, tiny_llama_dir)
    message = str(err.value)
    assert message.startswith("arm 'curated+dpo' (curated+dpo) trains on the curated set's preference pairs, and "
                              "none of its 12 rows has one") and "`preference_pairs` step made none" in message
    assert "\n" not in message and not (tmp_path / "exp" / "arms" / "curated" / "seed-0").exists()
    full = _train(tiny_llama_dir).model_copy(update={"method": "full"})
    from evaluation.experiment import run_experiment

    with pytest.raises(ConfigError, match=r"train.method full trains no adapter: use qlora or lora"):
        run_experiment(tmp_path / "x", _rows(12), _rows(12), _heldout(), config, full)


def test_the_arm_is_checked_where_the_recipe_is_read():
    from pydantic import ValidationError

    from pond.recipe import RecipeError, parse_recipe

    with pytest.raises(ValidationError, match="goes on training the SFT adapter of the arm with data curated, and "
                                              "there is none"):
        ExperimentConfig(arms=[ArmConfig(name="full", data="full"), DPO_ARM], baseline="full")
    with pytest.raises(ValidationError, match="`dpo:` options are for data curated\\+dpo"):
        ArmConfig(name="c", data="curated", dpo={"beta": 0.2})
    with pytest.raises(ValidationError, match="dpo.reference must be sft"):
        ArmConfig(name="d", data="curated+dpo", dpo={"reference": "base"})
    text = ("name: x\ninput: {path: a.jsonl}\nsteps:\n  - exact_dedup: {}\ntrain: {max_steps: 2}\nexperiment:\n"
            "  baseline: curated\n  arms:\n    - {name: curated, data: curated}\n    - {name: curated+dpo, data: curated+dpo}\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    assert str(err.value) == ("r.yaml:10: experiment.arms[1].data: curated+dpo trains on preference pairs, and no "
                              "step makes them: add a `preference_pairs` step to `steps:` (docs/preference-pairs.md)")
    assert parse_recipe(text.replace("  - exact_dedup: {}\n", "  - preference_pairs: {}\n"), "r.yaml").experiment
