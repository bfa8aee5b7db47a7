"""Packing keeps every conversation to itself: the batches pond trains on with `packing: true`
(best-fit decreasing, padding-free, position ids restarting at each conversation) give every answer
token the loss it has in a padded batch of the same conversations.

Both batch streams come from pond's own trainer (training.trainer's _setup_* functions, its SFTConfig
and TRL's collator), over one epoch of the same rows; the tiny Llama scores them in float32 and the
per-token losses are compared conversation by conversation. The same packed batches without their
position ids (one long sequence: each conversation attends to the ones packed before it) must differ,
or the comparison would not show a leak.
"""
from __future__ import annotations

import polars as pl
import torch
import torch.nn.functional as F

import training.trainer as T
from curation.records import MESSAGES
from training.config import TrainConfig
from training.data import IGNORE
from training.model import resolve_dtype

WORDS = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig"]


def _rows(n: int) -> pl.DataFrame:
    """Distinct conversations of different lengths (1 to 11 repeated words)."""
    convs = [[{"role": "user", "content": f"say {WORDS[i % 8]} {i % 11 + 1} times"},
              {"role": "assistant", "content": " ".join([WORDS[i % 8]] * (i % 11 + 1))}] for i in range(n)]
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "messages": convs, "text": [""] * n,
                         "source": ["test"] * n},
                        schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def _trainer(student_dir, rows: pl.DataFrame, tmp_path, packing: bool, **config):
    """pond's SFT trainer over `rows` (LoRA in float32 unless `config` says otherwise), as train() sets it up."""
    cfg = TrainConfig(**{"student": str(student_dir), "method": "lora", "compute_dtype": "fp32", "batch_size": 4,
                         "max_seq_len": 128, "max_steps": 1, "save_steps": 100, "packing": packing, **config})
    student = T._setup_student(cfg, None, None)
    data = T._setup_data(rows, None, student, cfg)
    model, tok, peft_config = T._setup_model(student, cfg)
    out = tmp_path / f"packing-{packing}-{cfg.method}-{cfg.compute_dtype}"
    trainer, _ = T._setup_trainer(model, tok, peft_config, cfg, out, 0, resolve_dtype(cfg.compute_dtype), data, None)
    return trainer


def _token_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss of predicting each token from the ones before it, that token's label), both [batch, len - 1]."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    labels = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
    return loss, labels


def _per_conversation(model, batches, packed: bool) -> dict[tuple, torch.Tensor]:
    """{a conversation's token ids: the losses at its answer tokens}, over every batch."""
    out = {}
    for batch in batches:
        loss, labels = _token_losses(model, batch)
        ids = batch["input_ids"]
        if packed:  # one padding-free row; a conversation starts where its position ids restart
            starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.size(1)]
            spans = [(0, a, b) for a, b in zip(starts, starts[1:])]
        else:
            spans = [(r, 0, int(batch["attention_mask"][r].sum())) for r in range(ids.size(0))]
        for r, a, b in spans:
            keep = labels[r, a:b - 1] != IGNORE  # position t predicts token t + 1 of the same conversation
            out[tuple(ids[r, a:b].tolist())] = loss[r, a:b - 1][keep]
    return out


def test_packed_and_padded_batches_give_each_answer_token_the_same_loss(tiny_llama_dir, tmp_path):
    rows = _rows(24)
    padded = _trainer(tiny_llama_dir, rows, tmp_path, packing=False)
    packed = _trainer(tiny_llama_dir, rows, tmp_path, packing=True)
    model = packed.model.eval()  # the student with fresh LoRA adapters (B = 0), no dropout
    packed_batches = list(packed.get_train_dataloader())
    assert "position_ids" in packed_batches[0] and "attention_mask" not in packed_batches[0]
    assert len(packed_batches) < len(list(padded.get_train_dataloader()))  # packing holds several per row

    by_padding = _per_conversation(model, padded.get_train_dataloader(), packed=False)
    by_packing = _per_conversation(model, packed_batches, packed=True)
    assert by_packing.keys() == by_padding.keys() and len(by_padding) == len(rows)
    assert max(len(ids) for ids in by_packing) < max(b["input_ids"].size(1) for b in packed_batches)
    for ids, loss in by_padding.items():
        assert loss.numel() > 0
        torch.testing.assert_close(by_packing[ids], loss, rtol=0, atol=1e-5)

    # The same packed rows without position ids: one causal sequence, each conversation sees the earlier ones
    leaky = [{"input_ids": b["input_ids"], "labels": b["labels"]} for b in packed_batches]
    starts = [(b["position_ids"][0] == 0).nonzero().flatten().tolist() + [b["input_ids"].size(1)]
              for b in packed_batches]
    differ = 0
    for batch, cuts in zip(leaky, starts):
        loss, labels = _token_losses(model, batch)
        for a, b in list(zip(cuts, cuts[1:]))[1:]:  # every conversation after the first in its row
            keep = labels[0, a:b - 1] != IGNORE
            ids = tuple(batch["input_ids"][0, a:b].tolist())
            differ += not torch.allclose(loss[0, a:b - 1][keep], by_padding[ids], rtol=0, atol=1e-5)
    assert differ > 0
    assert differ == sum(len(c) - 2 for c in starts)
