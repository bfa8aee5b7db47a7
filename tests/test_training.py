"""Training for real on CPU: a tiny random Llama quantised to 4-bit NF4, trained with LoRA."""
from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from curation.records import MESSAGES
from training.callbacks import EarlyStopping, lora_b_grads
from training.config import TrainConfig
from curation.settings import cpu_native_bf16
from training.model import load_student, resolve_dtype
from training.trainer import train

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig"]


def _rows(n: int, offset: int = 0) -> pl.DataFrame:
    """A learnable task: repeat a word n times."""
    convs = []
    for i in range(offset, offset + n):
        w, k = WORDS[i % len(WORDS)], i % 5 + 1
        convs.append([{"role": "user", "content": f"say {w} {k} times"},
                      {"role": "assistant", "content": " ".join([w] * k)}])
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "messages": convs, "text": [""] * n,
                         "source": ["test"] * n}, schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8,
                                                          "source": pl.Utf8})


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    return _rows(48)


@pytest.fixture(scope="module")
def heldout() -> pl.DataFrame:
    return _rows(16, offset=3)


def _config(student, **kw) -> TrainConfig:
    base = dict(student=str(student), max_steps=6, batch_size=8, lr=5e-3, max_seq_len=64, save_steps=100,
                warmup_ratio=0.0)
    return TrainConfig(**(base | kw))


PROVENANCE = {"dataset_hash": "sha256:feedface", "recipe_hash": "sha256:c0ffee", "pond_version": "9.9.9"}


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, rows, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    cfg = _config(tiny_llama_dir, max_steps=12, eval_on_start=True, eval_steps=4)
    return train(rows, cfg, out, eval_df=heldout, provenance=PROVENANCE), out


def _lora_model(student, seed=0, for_training=True):
    from peft import LoraConfig, get_peft_model

    model, tok = load_student(student, "qlora", "auto", for_training=for_training)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    return model, tok


def _batch(tok, rows: pl.DataFrame) -> dict:
    from training.data import tokenize_conversations

    enc = tokenize_conversations(rows.head(4), tok, 64)
    n = min(len(e["input_ids"]) for e in enc)
    return {"input_ids": torch.tensor([e["input_ids"][:n] for e in enc]),
            "labels": torch.tensor([e["labels"][:n] for e in enc])}


def test_qlora_layers_are_nf4_linear4bit_with_repack_disabled(tiny_llama_dir):
    import bitsandbytes as bnb

    model, _ = load_student(tiny_llama_dir, "qlora", "auto")
    linear = {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1].endswith("_proj")}
    assert len(linear) == 2 * 7  # q k v o gate up down, per layer
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in linear.values())
    for m in linear.values():
        assert m.weight.quant_state.quant_type == "nf4"
        assert m.weight.quant_state.nested  # double quantisation
        assert m.support_avx512bf16_for_cpu is False


def test_eval_then_train_every_lora_b_gets_a_gradient(tiny_llama_dir, rows):
    """Regression for the bitsandbytes AVX-512 BF16 repack: a no-grad eval forward must not break training."""
    model, tok = _lora_model(tiny_llama_dir)
    batch = _batch(tok, rows)
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    with torch.autocast("cpu", dtype=resolve_dtype("auto"), enabled=resolve_dtype("auto") == torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    grads = lora_b_grads(model)
    assert len(grads) == 14
    assert [n for n, g in grads.items() if g == 0.0] == []


def test_eval_before_the_first_step_still_moves_every_lora_b(tiny_llama_dir, rows, heldout, tmp_path):
    # Through the trainer: evaluate first, then one step. With the repack, 10 of these 14 stay zero.
    res = train(rows, _config(tiny_llama_dir, max_steps=1, eval_on_start=True), tmp_path, eval_df=heldout)
    weights = load_file(res.adapter_dir / "adapter_model.safetensors")
    b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert len(b) == 14 and [k for k, v in b.items() if not v.abs().sum() > 0] == []


def test_training_loss_and_heldout_loss_fall(trained):
    res, _ = trained
    assert res.steps == 12 and len(res.losses) == 12
    assert res.first_loss == res.losses[0]
    assert res.train_loss < res.first_loss - 0.3
    # evaluated before training, at steps 4, 8 and 12: learning continued after every evaluation
    assert res.eval_steps == [0, 4, 8, 12]
    assert all(b < a for a, b in zip(res.eval_losses, res.eval_losses[1:])), res.eval_losses
    assert 0 < res.answer_tokens_seen < res.tokens_seen
    assert res.rows == 48 and res.train_seconds > 0


def test_adapter_card_and_result_record_what_was_learned(trained, rows):
    res, out = trained
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "train-key.json", "train-result.json",
                                                     "train.DONE"]
    card = (res.adapter_dir / "README.md").read_text()
    for fact in (res.base_model, "qlora", "sha256:feedface", "sha256:c0ffee", "9.9.9", f"| training rows | {rows.height}",
                 f"{res.train_loss:.4f}", f"{res.eval_losses[-1]:.4f}", "lora_r", "| lr | `0.005` |"):
        assert fact in card, fact
    recorded = json.loads((out / "train-result.json").read_text())
    assert recorded["result"]["losses"] == res.losses and recorded["provenance"] == PROVENANCE


def test_adapter_round_trips_exactly(tiny_llama_dir, rows, tmp_path):
    from peft import PeftModel

    model, tok = _lora_model(tiny_llama_dir, for_training=False)  # loaded as evaluation loads it
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    batch = _batch(tok, rows)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"]).logits
    model.save_pretrained(tmp_path)
    base, _ = load_student(tiny_llama_dir, "qlora", "auto", for_training=False)
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        after = loaded(input_ids=batch["input_ids"]).logits
    assert torch.equal(before, after)


def test_trained_adapter_loads_and_changes_the_model(trained, tiny_llama_dir, rows):
    from peft import PeftModel

    res, _ = trained
    base, tok = load_student(tiny_llama_dir, "qlora", "auto", for_training=False)
    ids = _batch(tok, rows)["input_ids"]
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, res.adapter_dir).eval()
    saved = load_file(res.adapter_dir / "adapter_model.safetensors")
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(state) == len(saved) == 28
    for k, v in saved.items():
        match = [s for s in state if s.replace(".default", "") == k]
        assert len(match) == 1 and torch.equal(state[match[0]].to(v.dtype), v), k
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
    assert (tuned - plain).abs().max() > 1e-3


class Kill(Exception):
    pass


def _killer(at_step: int):
    def track(items, description, total=None):
        for i, x in enumerate(items):
            if i == at_step:
                raise Kill
            yield x
    return track


def _untouched(items, description, total=None):
    raise AssertionError("a finished run trained again")


def test_kill_and_resume_matches_an_uninterrupted_run(tiny_llama_dir, rows, tmp_path):
    cfg = _config(tiny_llama_dir, max_steps=5, save_steps=2, warmup_ratio=0.2)
    whole = train(rows, cfg, tmp_path / "whole", seed=3)
    with pytest.raises(Kill):
        train(rows, cfg, tmp_path / "killed", seed=3, progress=_killer(3))  # dies at the end of step 4, unsaved
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "killed" / "adapter").exists()
    resumed = train(rows, cfg, tmp_path / "killed", seed=3)
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    assert (resumed.tokens_seen, resumed.answer_tokens_seen) == (whole.tokens_seen, whole.answer_tokens_seen)
    # a finished run returns its record without training again
    again = train(rows, cfg, tmp_path / "killed", seed=3, progress=_untouched)
    assert again == resumed
    # and a different run may not reuse its folder
    with pytest.raises(ValueError, match="different settings.*seed"):
        train(rows, cfg, tmp_path / "killed", seed=4)


def test_a_heldout_set_does_not_change_the_weights_so_the_training_is_reused(tiny_llama_dir, rows, heldout,
                                                                               tmp_path):
    """Evaluation draws nothing from the training's random state (dropout on): the same training with and without
    a held-out set gives the same adapter, so an experiment arm that is `pond run`'s own training reuses it
    (`same_as`) instead of training again; any other setting trains."""
    cfg = _config(tiny_llama_dir, max_steps=6, eval_steps=2, save_steps=2, lora_dropout=0.1)
    with_eval = train(rows, cfg, tmp_path / "run", eval_df=heldout)
    alone = train(rows, cfg, tmp_path / "alone")
    a = load_file(with_eval.adapter_dir / "adapter_model.safetensors")
    b = load_file(alone.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(with_eval.eval_losses) == 3 and not alone.eval_losses
    reused = train(rows, cfg, tmp_path / "arm", same_as=tmp_path / "run", progress=_untouched)
    assert reused.adapter_dir == with_eval.adapter_dir and not (tmp_path / "arm" / "adapter").exists()
    other = train(rows, cfg, tmp_path / "arm-seed-1", seed=1, same_as=tmp_path / "run")
    assert other.adapter_dir == tmp_path / "arm-seed-1" / "adapter"
    # eval_steps 0: a held-out set given is not scored during training (evaluation scores the adapter after it)
    never = train(rows, cfg.model_copy(update={"eval_steps": 0}), tmp_path / "never", eval_df=heldout)
    c = load_file(never.adapter_dir / "adapter_model.safetensors")
    assert not never.eval_losses and all(torch.equal(b[k], c[k]) for k in b)
    assert "| held-out loss per evaluation | none (eval_steps 0" in (never.adapter_dir / "README.md").read_text()
    with pytest.raises(ValueError, match="early_stopping_patience needs the held-out loss"):
        _config(tiny_llama_dir, eval_steps=0, early_stopping_patience=2)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_other_methods_train(method, tiny_llama_dir, rows, tmp_path):
    from transformers import AutoModelForCausalLM

    res = train(rows, _config(tiny_llama_dir, method=method, max_steps=4, lr=2e-3 if method == "full" else 5e-3),
                tmp_path)
    assert res.method == method and res.steps == 4 and res.losses[-1] < res.losses[0]
    assert res.adapter_dir.name == ("model" if method == "full" else "adapter")
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(res.adapter_dir)
        assert not any("lora" in n for n, _ in model.named_parameters())


def test_packing_trains_on_the_same_tokens_with_fewer_rows(tiny_llama_dir, rows, tmp_path):
    kw = dict(max_steps=2, batch_size=4, max_seq_len=256)
    padded = train(rows, _config(tiny_llama_dir, **kw), tmp_path / "padded")
    packed = train(rows, _config(tiny_llama_dir, packing=True, **kw), tmp_path / "packed")
    # four packed sequences hold more conversations than four padded ones
    assert packed.answer_tokens_seen > padded.answer_tokens_seen
    assert all(math.isfinite(x) for x in packed.losses)


def test_merge_matches_base_plus_adapter(tiny_llama_dir, rows, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = train(rows, _config(tiny_llama_dir, method="lora", compute_dtype="fp32", max_steps=3, merge=True), tmp_path)
    ids = torch.tensor([[1, 40, 41, 42, 43, 2]])
    merged = AutoModelForCausalLM.from_pretrained(res.merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, res.adapter_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_early_stopping_keeps_the_best_adapter(tmp_path):
    class State:
        global_step = 0
        log_history: list = []

    class Control:
        should_training_stop = False

    class Model:
        def save_pretrained(self, path):
            path.mkdir(parents=True)
            (path / "weights").write_text(str(State.global_step))

    stop = EarlyStopping(patience=2, best_dir=tmp_path / "best")
    control = Control()
    for step, loss in enumerate([3.0, 2.0, 2.5, 1.95, 1.9, 2.2, 2.3, 1.0], start=1):
        State.global_step = step
        State.log_history = State.log_history + [{"step": step, "eval_loss": loss}]
        stop.on_evaluate(None, State, control, model=Model())
        if control.should_training_stop:
            break
    assert step == 7 and stop.stopped  # 2.2 and 2.3 did not beat 1.9
    assert (tmp_path / "best" / "weights").read_text() == "5"


def test_early_stopping_stops_training_and_saves_the_best(tiny_llama_dir, rows, heldout, tmp_path):
    # A learning rate this high makes the held-out loss bounce within a few steps.
    cfg = _config(tiny_llama_dir, max_steps=12, lr=0.05, eval_steps=1, early_stopping_patience=1)
    res = train(rows, cfg, tmp_path, eval_df=heldout)
    assert res.stopped_early and res.steps < 12
    best = min(range(len(res.eval_losses)), key=res.eval_losses.__getitem__)
    assert res.steps == res.eval_steps[best] + 1  # one evaluation without improvement
    assert (tmp_path / "best" / "STEP").read_text() == str(res.eval_steps[best])
    kept = load_file(res.adapter_dir / "adapter_model.safetensors")
    best_saved = load_file(tmp_path / "best" / "adapter_model.safetensors")
    assert kept.keys() == best_saved.keys() and all(torch.equal(kept[k], best_saved[k]) for k in kept)


def test_a_diverging_run_is_a_clear_error(tiny_llama_dir, rows, tmp_path):
    # fp32 pinned: under `auto` a CPU with native bf16 trains in bf16, where lr 50 did not overflow in
    # 6 steps (measured on a 2-core Intel with AMX), so the test would depend on the CPU it runs on
    with pytest.raises(FloatingPointError, match="diverged.*lower the learning rate"):
        train(rows, _config(tiny_llama_dir, max_steps=6, lr=50.0, compute_dtype="fp32"), tmp_path)


def test_auto_dtype_on_cpu_follows_native_bf16():
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_native_bf16() else torch.float32)
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32


def test_bad_options_are_clear_errors(tiny_llama_dir, rows, tmp_path):
    with pytest.raises(ValueError, match="target_modules.*nope.*q_proj"):
        train(rows, _config(tiny_llama_dir, target_modules=["q_proj", "nope"]), tmp_path / "a")
    with pytest.raises(ValueError, match="empty"):
        train(rows.head(0), _config(tiny_llama_dir), tmp_path / "b")
    no_answers = rows.with_columns(pl.col("messages").list.head(1))
    with pytest.raises(ValueError, match="assistant"):
        train(no_answers, _config(tiny_llama_dir), tmp_path / "c")
    with pytest.raises(ValueError, match="max_seq_len=512 .*maximum positions \\(256"):
        train(rows, _config(tiny_llama_dir, max_seq_len=512), tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="not-a-model"):
        train(rows, _config("not-a-model"), tmp_path / "e", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="held-out"):
        train(rows, _config(tiny_llama_dir, early_stopping_patience=2), tmp_path / "f")
    with pytest.raises(ValidationError, match="lora_rank"):
        TrainConfig(lora_rank=8)
    with pytest.raises(ValidationError, match="method"):
        TrainConfig(method="prefix")


@pytest.mark.slow
def test_smollm2_heldout_loss_drops_on_real_conversations(sharegpt_df, tmp_path):
    from training.model import resolve_student

    try:
        resolve_student("smollm2-135m-instruct")
    except FileNotFoundError:
        pytest.skip("SmolLM2 not converted (scripts/prepare_models.py)")
    answered = sharegpt_df.filter(
        pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.any())
    train_rows, held = answered.slice(32, 96), answered.head(32)
    cfg = TrainConfig(max_steps=12, batch_size=8, max_seq_len=128, lr=3e-4, eval_on_start=True, eval_steps=6,
                      save_steps=100)
    res = train(train_rows, cfg, tmp_path, eval_df=held)
    assert res.eval_steps == [0, 6, 12]
    assert res.eval_losses[-1] < res.eval_losses[0], res.eval_losses
