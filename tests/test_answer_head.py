"""pond's SFT loss through the output layer at answer positions only (training.answer_head) is TRL's loss:
the same value and the same LoRA gradients on the same batch, padded or packed, with and without the
accumulated batch's answer-token count; it runs under the trainer's autocast; a model whose logits are
capped keeps TRL's head (which caps them)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from trl import SFTTrainer

from tests.test_packing import _rows, _trainer
from training.answer_head import answer_loss
from training.data import IGNORE


def _with_lora_b(model, seed: int = 0) -> None:
    """Non-zero LoRA B tensors (fresh adapters have B = 0: the adapters would change neither loss nor A's
    gradients, and a comparison of them would show nothing)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = 0.05 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)


def _loss_and_grads(compute, model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _trl_loss(trainer, model, batch, items=None):
    return SFTTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=items)


@pytest.mark.parametrize("packing", [False, True])
def test_loss_and_gradients_equal_trls_on_the_same_batch(tiny_llama_dir, tmp_path, packing):
    trainer = _trainer(tiny_llama_dir, _rows(24), tmp_path, packing)
    model = trainer.model.eval()  # no dropout: both losses see the same network
    _with_lora_b(model)
    assert trainer._answer_head_applies(model)
    batch = next(iter(trainer.get_train_dataloader()))
    answer_tokens = (batch["labels"][:, 1:] != IGNORE).sum()
    assert 0 < answer_tokens < batch["labels"].numel() - batch["labels"].size(0)  # prompts are left out
    # None: the batch's own mean; a count: as if this batch were one of three accumulated
    for items in (None, 3 * answer_tokens):
        ours, ours_grads = _loss_and_grads(lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=items),
                                           model)
        trl, trl_grads = _loss_and_grads(lambda: _trl_loss(trainer, model, batch, items), model)
        torch.testing.assert_close(ours, trl, rtol=0, atol=1e-5)
        assert ours_grads.keys() == trl_grads.keys() and len(ours_grads) > 0
        for name, grad in ours_grads.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6)


def test_the_decoder_runs_under_the_trainers_autocast(tiny_llama_dir, tmp_path):
    """The decoder is called past accelerate's forward wrapper (which autocasts): compute_loss autocasts itself.
    Weights in float32 under a bf16 trainer: a projection's output is bf16 only under autocast."""
    trainer = _trainer(tiny_llama_dir, _rows(8), tmp_path, False, compute_dtype="bf16")
    model = trainer.model.eval()
    model.float()
    batch = next(iter(trainer.get_train_dataloader()))
    seen = []
    proj = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
    hook = proj.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        with torch.no_grad():
            ours = trainer.compute_loss(model, dict(batch))
            assert seen == [torch.bfloat16]
            with trainer.accelerator.autocast():  # TRL's, as its forward runs once train() has wrapped it
                trl = _trl_loss(trainer, model, batch)
    finally:
        hook.remove()
    torch.testing.assert_close(ours, trl, rtol=2e-2, atol=0)


def test_capped_logits_keep_trls_head(tiny_llama_dir, tmp_path):
    capped = tmp_path / "capped"
    shutil.copytree(tiny_llama_dir, capped)
    config = json.loads((capped / "config.json").read_text())
    (capped / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 0.5}))
    trainer = _trainer(capped, _rows(8), tmp_path, False)
    model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    assert not trainer._answer_head_applies(model)
    with torch.no_grad():
        pond, trl, uncapped = (trainer.compute_loss(model, dict(batch)), _trl_loss(trainer, model, batch),
                               answer_loss(model, dict(batch)))
    torch.testing.assert_close(pond, trl, rtol=0, atol=1e-6)
    assert abs(float(uncapped) - float(trl)) > 1e-2  # the cap matters: the plain head would be wrong here


def test_sliced_output_layer_gives_the_same_loss_and_gradients(tiny_llama_dir, tmp_path, monkeypatch):
    """Past HEAD_LOGITS the logits go in slices recomputed in the backward pass: nothing else changes."""
    import curation.head_nll as H

    trainer = _trainer(tiny_llama_dir, _rows(24), tmp_path, False)
    model = trainer.model.eval()
    _with_lora_b(model)
    batch = next(iter(trainer.get_train_dataloader()))
    whole, whole_grads = _loss_and_grads(lambda: answer_loss(model, dict(batch)), model)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(H, "HEAD_LOGITS", 5 * vocab)  # slices of 5 positions
    calls = []
    monkeypatch.setattr(H, "checkpoint", lambda *a, **kw: calls.append(1) or torch.utils.checkpoint.checkpoint(*a, **kw))
    sliced, sliced_grads = _loss_and_grads(lambda: answer_loss(model, dict(batch)), model)
    assert len(calls) == -(-int((batch["labels"][:, 1:] != IGNORE).sum()) // 5)
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(sliced_grads[name], grad, rtol=1e-5, atol=1e-7)
