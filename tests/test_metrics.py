"""Held-out metrics on a tiny random Llama: known answers, and loss that falls after training."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from curation.records import MESSAGES
from evaluation.metrics import (exact_match, generate_answers, is_structured, load_for_eval, loss_summary,
                                prompt_and_reference, references_are_short, row_losses, token_f1)
from training.data import tokenize_conversations

TRAIN_ROWS = [
    [{"role": "user", "content": "count to five"}, {"role": "assistant", "content": "one two three four five"}],
    [{"role": "user", "content": "what is the capital of france?"},
     {"role": "assistant", "content": "paris is the capital of france."}],
    [{"role": "user", "content": "reverse the word cat"}, {"role": "assistant", "content": "tac"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
     {"role": "assistant", "content": "hello, how can i help you today?"},
     {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "goodbye!"}],
]


def frame(rows) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(rows))], "messages": rows,
                         "text": ["" for _ in rows], "source": ["test"] * len(rows)},
                        schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def test_row_loss_equals_the_models_own_loss(tiny_llama_dir):
    model, tok = load_for_eval(tiny_llama_dir, "lora", "fp32")
    df = frame(TRAIN_ROWS)
    nll, count = row_losses(model, tok, df, max_seq_len=128, batch_size=3)
    enc = tokenize_conversations(df, tok, 128)
    for i, row in enumerate(enc):
        # transformers' causal-LM loss shifts labels the same way: mean NLL over the answer tokens.
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
        assert count[i] == sum(t != -100 for t in row["labels"][1:])
        assert nll[i] / count[i] == pytest.approx(float(expected), rel=1e-4)
    # An untrained model over a ~400-token vocabulary is close to uniform: loss near log(V).
    summary = loss_summary(nll, count)
    assert summary["tokens"] == int(count.sum())
    assert abs(summary["loss"] - math.log(model.config.vocab_size)) < 1.0
    assert summary["perplexity"] == pytest.approx(math.exp(summary["loss"]))


def test_rows_without_answer_tokens_score_zero(tiny_llama_dir):
    model, tok = load_for_eval(tiny_llama_dir, "lora", "fp32")
    rows = [TRAIN_ROWS[0], [{"role": "user", "content": "no answer here"}],
            [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "cut off"}]]
    nll, count = row_losses(model, tok, frame(rows), max_seq_len=64)
    assert count[0] > 0 and count[1] == 0 and count[2] == 0
    assert nll[1] == 0 and nll[2] == 0


def test_loss_on_training_text_falls_after_training(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    df = frame(TRAIN_ROWS)
    base, tok = load_for_eval(tiny_llama_dir, "lora", "fp32")
    before = loss_summary(*row_losses(base, tok, df, max_seq_len=128))["loss"]

    # Train a LoRA adapter on exactly these rows, save it, and score it through load_for_eval.
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    enc = tokenize_conversations(df, tok, 128)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(40):
        for row in enc:
            loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(tmp_path / "adapter")

    tuned, tok2 = load_for_eval(tiny_llama_dir, "lora", "fp32", adapter_dir=tmp_path / "adapter")
    after = loss_summary(*row_losses(tuned, tok2, df, max_seq_len=128))["loss"]
    assert after < before - 0.5, (before, after)
    # The base model itself is unchanged on disk: a fresh load scores as before.
    fresh, _ = load_for_eval(tiny_llama_dir, "lora", "fp32")
    assert loss_summary(*row_losses(fresh, tok, df, max_seq_len=128))["loss"] == pytest.approx(before, rel=1e-5)


def test_generation_is_batched_and_matches_one_by_one(tiny_llama_dir):
    model, tok = load_for_eval(tiny_llama_dir, "lora", "fp32")
    prompts = [prompt_and_reference(m)[0] for m in TRAIN_ROWS]
    batched = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=4)
    single = [generate_answers(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert len(batched) == len(prompts)
    assert all(isinstance(a, str) for a in batched)
    # Left padding must not change greedy answers.
    assert batched == single


def test_prompt_and_reference_split_at_last_answer():
    prompt, ref = prompt_and_reference(TRAIN_ROWS[3])
    assert ref == "goodbye!"
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt_and_reference([{"role": "user", "content": "hi"}]) == ([{"role": "user", "content": "hi"}], "")


def test_task_metrics():
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("paris, france", "paris") == 0.0
    assert token_f1("paris france", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("london", "paris") == 0.0
    assert token_f1("", "") == 1.0
    assert references_are_short(["paris", "four", "yes it is"], 10)
    assert not references_are_short(["word " * 50, "word " * 30, "x"], 10)


def test_structured_answers():
    assert is_structured("Here:\n```python\nprint(1)\n```")
    assert is_structured("Steps:\n1. open\n2. close")
    assert is_structured("- apples\n- pears")
    assert is_structured("| a | b |\n|---|---|")
    assert not is_structured("Paris is the capital of France. It has 2 million people.")
    assert not is_structured("I think -that- is fine")
    assert np.mean([is_structured(a) for a in ("x", "- y")]) == 0.5


def test_a_models_losses_on_the_same_rows_are_computed_once_per_run(tiny_llama_dir, tmp_path, monkeypatch):
    """loss_memo: the second ask for the same model on the same rows reads the run's memo, equal to the first
    (the model is not loaded); other rows or another length cut are computed."""
    from evaluation import loss_memo

    df, memo = frame(TRAIN_ROWS), loss_memo.memo_dir(tmp_path)
    first = loss_memo.losses(tiny_llama_dir, "lora", "fp32", df, 128, 2, memo=memo)
    plain = row_losses(*load_for_eval(tiny_llama_dir, "lora", "fp32"), df, max_seq_len=128, batch_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, plain))

    def no_load(*a, **k):
        raise AssertionError("loaded again")

    monkeypatch.setattr(loss_memo, "load_for_eval", no_load)
    again = loss_memo.losses(tiny_llama_dir, "lora", "fp32", df, 128, 2, memo=memo)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for other in ((df.head(3), 128), (df, 64)):
        with pytest.raises(AssertionError, match="loaded again"):
            loss_memo.losses(tiny_llama_dir, "lora", "fp32", other[0], other[1], 2, memo=memo)
    assert len(list(memo.glob("*.parquet"))) == 1
