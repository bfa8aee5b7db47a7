"""Faster CPU inference for BERT-style encoders: oneDNN linear layers with fused epilogues.

PyTorch's CPU `nn.Linear` is `addmm`, which first copies the broadcast bias into the output and
then multiplies; in bf16 that copy plus the separate GELU and residual-add passes cost about as
much as the matrix products themselves (profiled on all-MiniLM-L6-v2, 32 × 256 tokens).
`torch.ops.mkldnn._linear_pointwise` (what torch.compile's Inductor emits on CPU) does the bias,
the GELU and the residual add inside the oneDNN matmul instead.

Every swap is checked on a probe input against the module it replaces and kept only if it
agrees, so an unknown architecture, another activation or a PyTorch without the op simply keeps
the stock modules.
"""
from __future__ import annotations

import torch
from torch import nn

_GELU = {"none": lambda t: nn.functional.gelu(t), "tanh": lambda t: nn.functional.gelu(t, approximate="tanh")}


def available() -> bool:
    try:
        return hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):
        return False


class OneDnnLinear(nn.Module):
    """`act(x @ W.T + b)` in one oneDNN call (act: none or gelu)."""

    def __init__(self, linear: nn.Linear, act: str = "none", algorithm: str = ""):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.act, self.algorithm = act, algorithm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.act, [], self.algorithm)


class OneDnnOutput(nn.Module):
    """BERT's `LayerNorm(dense(h) + residual)` with the residual add fused into the matmul."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.dense, self.LayerNorm = module.dense, module.LayerNorm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        fused = torch.ops.mkldnn._linear_pointwise.binary(hidden_states, input_tensor, self.dense.weight,
                                                          self.dense.bias, "add")
        return self.LayerNorm(fused)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float().flatten(1), b.float().flatten(1)
    return bool(nn.functional.cosine_similarity(a, b, dim=1).min() > 0.999)


def _probe(module: nn.Module, replacement: nn.Module, *inputs: torch.Tensor) -> bool:
    try:
        with torch.inference_mode():
            return _close(module(*inputs), replacement(*inputs))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _gelu_kind(act) -> str | None:
    t = torch.linspace(-6, 6, 97)
    try:
        with torch.inference_mode():
            out = act(t)
    except Exception:  # noqa: BLE001 - an activation we cannot call is simply not fused
        return None
    for kind, ref in _GELU.items():
        if torch.allclose(out, ref(t), atol=1e-6):
            return kind
    return None


def fuse(model: nn.Module) -> int:
    """Swap eligible modules of `model` (in place, CPU, eval mode) for fused ones; returns how many."""
    if not available():
        return 0
    dtype = next(model.parameters()).dtype
    swapped = 0
    for name, module in list(model.named_modules()):
        dense = getattr(module, "dense", None)
        if not isinstance(dense, nn.Linear):
            continue
        x = torch.randn(2, 8, dense.in_features, dtype=dtype)
        act = getattr(module, "intermediate_act_fn", None)
        if act is not None:  # BertIntermediate: act(dense(h))
            kind = _gelu_kind(act)
            fused = OneDnnLinear(dense, "gelu", kind) if kind else None
            if fused is not None and _probe(module, fused, x):
                module.dense, module.intermediate_act_fn = fused, nn.Identity()
                swapped += 1
            continue
        if hasattr(module, "LayerNorm"):  # BertOutput / BertSelfOutput: LayerNorm(dense(h) + residual)
            res = torch.randn(2, 8, dense.out_features, dtype=dtype)
            fused = OneDnnOutput(module)
            if _probe(module, fused, x, res):
                _set(model, name, fused)
                swapped += 1
    for name, module in list(model.named_modules()):  # every other linear: bias fused
        if type(module) is nn.Linear:
            fused = OneDnnLinear(module)
            if _probe(module, fused, torch.randn(2, 8, module.in_features, dtype=dtype)):
                _set(model, name, fused)
                swapped += 1
    return swapped


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
