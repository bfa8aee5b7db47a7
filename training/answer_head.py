"""The SFT loss with the output layer and its cross-entropy only at answer positions.

TRL's SFTTrainer (1.16) scores through its fused LM head; where Triton does not run (every CPU) that
head projects every position onto the vocabulary, padding and prompt included, in float32 chunks with
entropy and top-1 beside the log-probabilities, and recomputes the chunks in the backward pass. A
causal LM's loss reads only the positions whose next-token label is not the ignore index: here the
decoder runs once, its last hidden states are gathered at those positions, and the output layer and a
float32 cross-entropy run there alone. Measured in bench/train.py (pond vs plain TRL in the same dtype).

The loss is TRL's own: the sum over answer tokens divided by `num_items_in_batch` (the answer tokens of
the whole accumulated batch) when the Trainer gives it, else by this batch's answer tokens.
"""
from __future__ import annotations

import torch

from curation.head_nll import token_nll
from training.data import IGNORE

# Config fields by which some models scale or cap the output layer's logits (TRL's fused head reads the same
# ones): a model with any of them set keeps TRL's head, which applies them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM under a PEFT wrapper (LoRA layers sit inside it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_logits(model: torch.nn.Module) -> bool:
    """Whether the model's logits are its output layer's, unscaled and uncapped."""
    config = causal_lm(model).config.get_text_config()
    return all(getattr(config, k, None) is None for k in LOGIT_TRANSFORMS)


def answer_nll(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Per answer token (shifted label != IGNORE, in row order), its negative log-likelihood under `model`:
    the decoder over the batch, the output layer at answer positions only."""
    lm = causal_lm(model)
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k != "labels"} | {"use_cache": False}
    hidden = lm.base_model(**kwargs).last_hidden_state  # the decoder: base_model is the LM's backbone
    mask = labels[:, 1:] != IGNORE  # position t predicts token t + 1
    return token_nll(lm.get_output_embeddings(), hidden[:, :-1][mask], labels[:, 1:][mask])


def answer_loss(model: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """TRL's SFT loss (mean over answer tokens, or sum / `num_items_in_batch`), from `answer_nll`."""
    nll = answer_nll(model, inputs)
    count = nll.numel() if num_items_in_batch is None else num_items_in_batch
    # clamped: a batch without answer tokens is a differentiable zero, not 0 / 0 (as in TRL)
    return nll.sum() / torch.as_tensor(count, device=nll.device).clamp(min=1)
