"""`train: {method: dpo}` (training/dpo.py): DPO for real on CPU, on the tiny random Llama of
tests/fixtures_models.py, 4-bit NF4 with LoRA as the default `dpo.base_method` loads it.

The task is learnable in a few steps: "say cat 3 times" is answered "cat cat cat" on the chosen side and
with another word on the rejected side. Resume is held to the SFT resume tolerance (rtol 1e-5, atol 1e-6,
tests/test_training_kill.py) by a cheaper equivalent of that file's kills: the run is stopped at the end
of an SFT step and again at the end of a DPO step (its progress wrapper raises, as Ctrl-C does), each
time after steps whose checkpoints are sealed, and the last start finishes."""
from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from curation.errors import ConfigError
from curation.records import MESSAGES
from pond.pipeline import _trainer, run_pipeline
from pond.recipe import RecipeError, parse_recipe
from training.config import TrainConfig
from training.dpo import SFT_DIR, train_dpo
from training.trainer import train

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig"]


def _rows(n: int, paired_every: int = 3) -> pl.DataFrame:
    """n rows of the repeat-a-word task; all but every `paired_every`-th carry a pair (as preference_pairs
    leaves them: the pair columns null on the rest)."""
    cols: dict[str, list] = {k: [] for k in ("id", "messages", "prompt", "chosen", "rejected")}
    for i in range(n):
        w, k = WORDS[i % len(WORDS)], i % 5 + 1
        prompt = [{"role": "user", "content": f"say {w} {k} times"}]
        good = [{"role": "assistant", "content": " ".join([w] * k)}]
        bad = [{"role": "assistant", "content": " ".join([WORDS[(i + 3) % len(WORDS)]] * (6 - k))}]
        paired = i % paired_every != 0
        for name, value in (("id", f"r{i}"), ("messages", prompt + good), ("prompt", prompt if paired else None),
                            ("chosen", good if paired else None), ("rejected", bad if paired else None)):
            cols[name].append(value)
    return pl.DataFrame(cols | {"text": [""] * n, "source": ["test"] * n},
                        schema={"id": pl.Utf8, "messages": MESSAGES, "prompt": MESSAGES, "chosen": MESSAGES,
                                "rejected": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def _config(student, reference: str = "base", dpo_steps: int = 4, **kw) -> TrainConfig:
    base = dict(student=str(student), method="dpo", max_steps=3, batch_size=4, lr=5e-3, max_seq_len=64,
                save_steps=100, warmup_ratio=0.0, dpo={"reference": reference, "lr": 1e-3, "max_steps": dpo_steps})
    return TrainConfig(**(base | kw))


PROVENANCE = {"dataset_hash": "sha256:feedface", "recipe_hash": "sha256:c0ffee", "pond_version": "9.9.9"}


def test_dpo_on_the_base_learns_the_preference_and_saves_a_carded_adapter(tiny_llama_dir, tmp_path):
    from peft import PeftModel

    from training.model import load_student

    rows = _rows(24)
    result = train_dpo(rows, _config(tiny_llama_dir, dpo_steps=12), tmp_path, seed=1, provenance=PROVENANCE)
    assert result.steps == 12 and result.method == "dpo" and result.rows == 16  # the 16 pair rows, not 24
    assert result.losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: the fresh adapter is the reference
    assert result.train_loss < 0.6 and result.tokens_seen > result.answer_tokens_seen > 0
    adapter = tmp_path / "adapter"
    assert result.adapter_dir == adapter and not (adapter / "ref").exists() and not (tmp_path / SFT_DIR).exists()
    card = (adapter / "README.md").read_text()
    assert "| method | dpo" in card and '"reference": "base"' in card and "sha256:c0ffee" in card
    assert "tags: [pond, qlora, dpo]\n" in card  # DPO on the base: no SFT went into these weights
    history = json.loads((tmp_path / "train-result.json").read_text())["log_history"]
    assert history[-2]["rewards/margins"] > 0 and (tmp_path / "train.DONE").exists()
    model, _ = load_student(tiny_llama_dir, "qlora", for_training=False)  # how evaluation loads it (as_sft)
    assert PeftModel.from_pretrained(model, adapter).active_adapter == "default"
    again = train_dpo(rows, _config(tiny_llama_dir, dpo_steps=12), tmp_path, seed=1, provenance=PROVENANCE)
    assert again.losses == result.losses  # finished: the recorded result, nothing trained


class Stop(Exception):
    """What a Ctrl-C inside a step's progress tick does to a run."""


def _stopping_at(description: str, step: int):
    def track(items, desc, total=None):
        for n, x in enumerate(items):
            if desc == description and n == step - 1:  # the tick at the end of `step`
                raise Stop(f"{desc} stopped at step {step}")
            yield x
    return track


def test_dpo_on_the_sft_adapter_resumes_to_the_unbroken_adapter(tiny_llama_dir, tmp_path, caplog):
    rows = _rows(24)
    cfg = _config(tiny_llama_dir, reference="sft", save_steps=1, save_total_limit=2)
    whole = train_dpo(rows, cfg, tmp_path / "whole", seed=3)
    sft_adapter = load_file(tmp_path / "whole" / SFT_DIR / "adapter" / "adapter_model.safetensors")
    dpo_adapter = load_file(whole.adapter_dir / "adapter_model.safetensors")
    assert sft_adapter.keys() == dpo_adapter.keys()  # DPO went on training the SFT adapter, nothing else
    assert any(not torch.equal(sft_adapter[k], dpo_adapter[k]) for k in sft_adapter)
    assert whole.losses[0] == pytest.approx(0.6931, abs=1e-3)  # the reference is the SFT adapter itself
    out = tmp_path / "broken"
    for where, step in (("train", 2), ("dpo", 3)):  # inside the SFT stage, then inside DPO
        with pytest.raises(Stop):
            train_dpo(rows, cfg, out, seed=3, progress=_stopping_at(where, step))
    assert (out / SFT_DIR / "train.DONE").exists() and not (out / "train.DONE").exists()
    with caplog.at_level("INFO", logger="training.trainer"):
        result = train_dpo(rows, cfg, out, seed=3)
    assert f"resuming from {out / 'checkpoints' / 'checkpoint-2'}" in caplog.text  # not a fresh start
    assert result.losses == pytest.approx(whole.losses, rel=1e-5) and result.steps == whole.steps == 4
    a, b = dpo_adapter, load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert "tags: [pond, qlora, sft, dpo]\n" in (out / "adapter" / "README.md").read_text()
    assert "tags: [pond, qlora, sft]\n" in (out / SFT_DIR / "adapter" / "README.md").read_text()
    key = json.loads((out / "train-key.json").read_text())
    assert key["sft_adapter_hash"] and key["config"]["dpo"]["reference"] == "sft"


def test_rows_without_pairs_are_one_line_naming_the_step_that_makes_them(tmp_path):
    rows = _rows(6).drop("prompt", "chosen", "rejected")
    with pytest.raises(ConfigError) as err:
        train_dpo(rows, _config("no-such-student"), tmp_path)  # before the student is even looked up
    message = str(err.value)
    assert "none of the 6 training rows" in message and "`preference_pairs` step" in message and "\n" not in message
    nulls = _rows(6, paired_every=1)  # the columns there, every pair null
    with pytest.raises(ConfigError, match="none of the 6 training rows has one"):
        train_dpo(nulls, _config("no-such-student"), tmp_path)


def test_dpo_options_belong_to_method_dpo_and_leave_sft_configs_as_they_were():
    with pytest.raises(RecipeError, match="`dpo:` options are for `method: dpo`; this section trains with method "
                                          "qlora"):
        parse_recipe("name: x\ninput: {path: a.jsonl}\ntrain: {dpo: {beta: 0.3}}\n", "r.yaml")
    sft = TrainConfig()
    assert "dpo" not in sft.model_dump() and "dpo" not in sft.model_dump_json()  # SFT keys and recipe hashes unchanged
    dpo = TrainConfig(method="dpo", dpo={"base_method": "lora"})
    assert dpo.model_dump()["dpo"]["reference"] == "sft"
    assert dpo.as_sft().method == "lora" and "dpo" not in dpo.as_sft().model_dump()
    assert _trainer(dpo) is train_dpo and _trainer(sft) is train


RECIPE = """\
name: dpo run
input: {{path: raw.jsonl}}
steps:
  - preference_pairs: {{}}
train: {{student: "{student}", method: dpo, max_steps: 2, batch_size: 4, max_seq_len: 64, save_steps: 100,
         dpo: {{max_steps: 2, lr: 1.0e-3}}}}
"""


def test_pond_run_trains_dpo_after_sft_on_the_runs_pairs(tiny_llama_dir, tmp_path):
    """A recipe's `train: {method: dpo}` goes through training/dpo.py: judged candidates -> preference_pairs ->
    SFT on every curated row -> DPO on the pair rows -> the run's adapter/."""
    lines = []
    for i in range(8):
        w = WORDS[i]
        for answer, score in ((f"{w} {w}", 9), (f"{WORDS[i - 1]}", 2)):
            lines.append({"messages": [{"role": "user", "content": f"say {w} 2 times"},
                                       {"role": "assistant", "content": answer}],
                          "candidate_of": f"case-{i}", "judge_score": score})
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    logged = []
    recipe = parse_recipe(RECIPE.format(student=tiny_llama_dir), "r.yaml")
    run_pipeline(recipe, tmp_path / "run", tmp_path, log=logged.append)
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["train"]["adapter"] == str(run / "adapter") and manifest["train"]["rows"] == 8  # 8 pairs
    assert (run / SFT_DIR / "adapter" / "adapter_model.safetensors").exists()  # the SFT stage, on all 8 rows
    assert json.loads((run / SFT_DIR / "train-result.json").read_text())["result"]["rows"] == 8
    assert any(line.startswith("train: 8 rows, dpo on ") for line in logged)


def test_sft_and_dpo_share_one_home_for_totals_divergence_and_resume_dtype():
    from types import SimpleNamespace

    from training.callbacks import CountingSFTTrainer, PondTrainerMixin
    from training.dpo import _DPOTrainer

    for cls in (CountingSFTTrainer, _DPOTrainer):
        assert issubclass(cls, PondTrainerMixin)
        # neither trainer keeps its own copy of the shared pieces
        assert not {"log", "_load_from_checkpoint", "_totals", "keep_adapters_in"} & set(vars(cls))
    dpo = object.__new__(_DPOTrainer)  # the shared log() with DPO's advice, no model needed
    dpo.state, dpo.args = SimpleNamespace(global_step=3, log_history=[]), SimpleNamespace(learning_rate=1e-3)
    with pytest.raises(FloatingPointError, match=r"diverged: loss is nan at step 3 \(lr 0.001\); lower train.dpo.lr"):
        dpo.log({"loss": float("nan")})
    sft = object.__new__(CountingSFTTrainer)
    sft.state, sft.args = dpo.state, dpo.args
    with pytest.raises(FloatingPointError, match="eval_loss is inf .*lower the learning rate"):
        sft.log({"eval_loss": float("inf")})
