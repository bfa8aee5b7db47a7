"""Find and load the student: 4-bit NF4 (QLoRA) or plain weights, on CUDA or CPU.

Shared with evaluation, so that held-out loss is computed on exactly the model training saw.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from curation.errors import ConfigError
from curation.settings import pick_dtype, quiet_model_loading, resolve_model
from training.distributed import local_rank

log = logging.getLogger(__name__)

METHODS = ("qlora", "lora", "full")


def resolve_student(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """A local model folder: an existing path, else `<cache>/models/<name>` (curation.settings.resolve_model)."""
    return resolve_model(name_or_path, cache_dir, "student")


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(compute_dtype: str, dev: torch.device | None = None) -> torch.dtype:
    """The project's one dtype rule (curation.settings.pick_dtype) as a torch dtype.

    Measured on a 2-core Intel with AVX-512 BF16 (SmolLM2-135M QLoRA, batch 8 x 256,
    `bench/train.py --dtypes fp32,bf16`): bf16 163 tokens/s and 7.0 GB peak, fp32 113 tokens/s and
    10.2 GB, so bf16 is the default where the CPU has native bf16.
    """
    dev = dev or device()
    return torch.bfloat16 if pick_dtype(compute_dtype, dev.type) == "bf16" else torch.float32


def set_threads(threads: int | None = None) -> int:
    """Torch CPU threads from the machine: explicit value, else OMP_NUM_THREADS, else usable cores."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def disable_cpu_repack(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' AVX-512 BF16 fused-kernel repack on every Linear4bit.

    An eval/no-grad forward through `bnb.nn.Linear4bit` on such CPUs repacks the weights in place
    for an inference kernel; training afterwards silently stops updating most LoRA tensors (and
    layers whose output size is not a multiple of 32 fail with `N must be divisible by block_n`).
    Returns how many layers were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def max_positions(path: Path) -> int | None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(cfg, "max_position_embeddings", None)


def check_targets(model: torch.nn.Module, targets: list[str] | str) -> None:
    """LoRA's target_modules must each name a linear module of the student (plain, or bitsandbytes' 4-bit)."""
    if targets == "all-linear":
        return
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) or type(m).__name__.startswith("Linear")})
    unknown = [t for t in targets if t not in linear]
    if unknown or not targets:
        raise ConfigError(f"target_modules {unknown or targets} match no linear module of the student; "
                          f"its linear modules are: {', '.join(linear)}")


def check_targets_before_loading(path: str | Path, targets: list[str] | str) -> None:
    """`check_targets` on the student built from its config on the meta device (no weight is read): a recipe whose
    targets match nothing is refused before curation starts, not after it (pond.cli)."""
    if targets == "all-linear":
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    check_targets(model, targets)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_student(path: str | Path, method: str = "qlora", compute_dtype: str = "auto", for_training: bool = True,
                 *, cache_dir: Path | None = None):
    """Load (model, tokenizer). qlora: NF4 4-bit with double quantisation via bitsandbytes.

    `path` may also be a model name under the cache. With `for_training` the base is frozen
    (qlora; the trainer adds the adapters), full fine-tuning gets fp32 master weights, and the
    model is left in train mode. On CPU the bitsandbytes repack is always disabled, so training
    and evaluation run the same kernels and give the same numbers.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method not in METHODS:
        raise ConfigError(f"train.method must be one of {', '.join(METHODS)}, not {method!r}")
    path = resolve_student(str(path), cache_dir)
    dev = device()
    dtype = resolve_dtype(compute_dtype, dev)
    # Full fine-tuning keeps fp32 master weights (bf16 then comes from autocast): AdamW updates on
    # bf16 weights round away.
    weights_dtype = torch.float32 if method == "full" and for_training else dtype
    # One GPU per rank when training in several processes (LOCAL_RANK, training.distributed).
    gpu = dev.index if dev.index is not None else local_rank()
    kwargs: dict = {"dtype": weights_dtype, "device_map": {"": gpu} if dev.type == "cuda" else {"": "cpu"}}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    quiet_model_loading()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if dev.type == "cpu":
        disable_cpu_repack(model)
    if for_training:
        if method == "qlora" and dtype == torch.float32:
            from peft import prepare_model_for_kbit_training

            # Gradient checkpointing is the trainer's switch, not the loader's.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        elif method == "qlora":
            # prepare_model_for_kbit_training would also upcast the frozen bf16 norms and embeddings
            # to fp32 (an fp16-era safeguard; bf16 has fp32's range). Measured here (SmolLM2-135M,
            # batch 8 x 256, CPU): no faster, 0.85 GB (12%) more peak memory. Freeze only.
            model.requires_grad_(False)
        model.train()
    else:
        model.eval()
    return model, load_tokenizer(path)
