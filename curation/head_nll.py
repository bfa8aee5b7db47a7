"""Each target token's negative log-likelihood through a model's output layer, at given positions only: the
rule training's loss (training.answer_head) and the `ifd` scorer share.

The logits are float32 (for the softmax) and never more than HEAD_LOGITS at once (512 MiB): SmolLM2's 49k
vocabulary x 2,730 positions, so a training batch of 8 x 256 tokens is one slice; Gemma 3's 262k vocabulary
x 512 positions. With a gradient, a slice's logits are recomputed in the backward pass, not kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

HEAD_LOGITS = 2**27


def _nll(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(states).float(), targets, reduction="none")


def token_nll(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL of each target under `head(states)` (`head` may be an Identity over logits already computed)."""
    vocab = head.weight.shape[0] if hasattr(head, "weight") else states.shape[-1]
    step = max(1, HEAD_LOGITS // vocab)
    if states.size(0) <= step:
        return _nll(head, states, targets)
    if not torch.is_grad_enabled():
        return torch.cat([_nll(head, s, t) for s, t in zip(states.split(step), targets.split(step))])
    return torch.cat([checkpoint(_nll, head, s, t, use_reentrant=False)
                      for s, t in zip(states.split(step), targets.split(step))])
