"""Project-wide settings at the bottom of the import graph: the cache folder (and model folders
in it), the no-op progress tracker, the dtype rule, quiet model loading, and what hardware a figure came from.

The dtype rule is written once, here, and every part that runs a model asks it: training,
embeddings, scorers, evaluation and every vLLM server pond starts. bf16 only where the device
computes it natively: CUDA with bf16 support, or a CPU with AVX-512 BF16 or AMX (x86) or the BF16
extension (Arm). Elsewhere the CPU emulates bf16, and float32 is much faster. Measured on a 2-core
AMD EPYC with AVX2 only: 16 chat requests of ~730 prompt tokens to SmolLM2-135M took 471.6 s in
bf16 and 58.3 s with `--dtype float32` (8.1x).

No torch import at module level: curation runs without torch; only a CUDA question imports it.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

# bitsandbytes on an AVX-512 BF16 CPU asks for a kernel from the Hugging Face hub (package `kernels`),
# which nothing here may download, and warns when it is imported; its built-in fallback is what runs.
# Set here, before anything imports it (every part of pond imports this module first).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft asks every model it wraps for transformers' deprecated `is_gradient_checkpointing` (transformers 5.23,
# peft 0.21): a FutureWarning for each adapter pond trains or loads, about code that is not pond's.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

T = TypeVar("T")
# The student when a recipe names none (train.student, and every local scorer or counter that stands in
# for it: ifd, select's token budget), also the teacher pond serves by default; and the training
# truncation by default (train.max_seq_len), which those counters mirror.
DEFAULT_STUDENT = "smollm2-135m-instruct"
DEFAULT_MAX_SEQ_LEN = 256
Dtype = Literal["bf16", "fp32"]
DTYPE_CHOICES = ("auto", "bf16", "fp32")
# The flags that decide bf16 speed (x86: avx512_bf16, amx_bf16; Arm: bf16), recorded with figures.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
RECORDED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "bf16", "sve")
# The measured cost of emulated bf16 (see the module docstring), quoted by the warning.
EMULATED_BF16_SLOWDOWN = "8.1x slower than float32 (vLLM, SmolLM2-135M, 16 requests, 2-core AMD EPYC with AVX2 only)"

log = logging.getLogger("pond")
_warned: set[str] = set()


def default_cache_dir() -> Path:
    """Shared caches (converted models, the teacher venv, embeddings): $POND_CACHE_DIR or ~/.cache/pond."""
    return Path(os.environ.get("POND_CACHE_DIR", Path.home() / ".cache" / "pond"))


def resolve_model(name_or_path: str, cache_dir: Path | None = None, option: str = "student") -> Path:
    """A local model folder: an existing path, else `<cache>/models/<name>` (where
    scripts/prepare_models.py converts the default student). `option` names the recipe key in the error."""
    p = Path(name_or_path).expanduser()
    if (p / "config.json").is_file():
        return p
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / "models" / name_or_path
    if (cached / "config.json").is_file():
        return cached
    from curation.errors import ModelNotFound

    raise ModelNotFound(
        f"{option} {name_or_path!r} not found: it is neither a model folder (with config.json) nor "
        f"{cached}; run `python scripts/prepare_models.py` for the default student, or point `{option}:` at a "
        f"local Hugging Face causal-LM folder")


def no_progress(items: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """The tracker used when nobody shows progress: same signature as the CLI's rich tracker."""
    yield from items


def quiet_model_loading() -> None:
    """Turn off transformers' own bars ("Loading weights" for every model a run loads, a dozen in the demo):
    pond's stage lines and rich bars say what is running. Called by each loader, after it imports transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict:
    """Model, vendor/family/model numbers and flags of the first processor in a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: they are all alike here
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    ident = " ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields)
    return {"model": fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or "unknown",
            "vendor": fields.get("vendor_id", ""), "id": ident, "flags": flags}


def usable_cores() -> int:
    """The cores this process may run on (its affinity; all of them where the OS has no affinity)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@functools.cache
def cpu() -> dict:
    info = parse_cpuinfo(_cpuinfo_text())
    info["cores"] = usable_cores()
    return info


# oneDNN instruction-set caps below which torch computes bf16 by emulation, whatever the CPU has
# (ONEDNN_MAX_CPU_ISA=AVX2 runs the slowest machine's code paths on a faster one)
_ISA_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def cpu_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether torch computes bf16 natively here: the CPU has AVX-512 BF16, AMX or Arm BF16, and the
    oneDNN/ATen instruction set is not capped below them."""
    if flags is None:
        capped = (os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISA_WITHOUT_BF16
                  or os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in {"default", "avx2"})
        if capped:
            return False
    return bool(BF16_FLAGS & set(cpu()["flags"] if flags is None else flags))


def default_device() -> str:
    """'cuda' where torch sees a GPU, else 'cpu'. torch is imported only if it is installed."""
    if "torch" not in sys.modules:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_native_bf16(device: str) -> bool:
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_bf16_supported())
    return cpu_native_bf16()


def pick_dtype(requested: str = "auto", device: str | None = None) -> Dtype:
    """The one dtype rule: `requested` wins when it names a dtype; `auto` gives bf16 only where
    the device computes it natively, else fp32. A forced bf16 on a CPU without it runs, and warns
    once with the measured cost."""
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, not {requested!r}")
    device = device or default_device()
    native = device_native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        warn_once("emulated-bf16", f"bf16 forced on {describe_cpu()}, which has no native bf16: every bf16 "
                                   f"matmul is emulated; measured {EMULATED_BF16_SLOWDOWN}. Use dtype auto or fp32.")
    return requested  # type: ignore[return-value]


def warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    log.warning(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def describe_cpu() -> str:
    """One line for a figure's label: model, cores, bf16 native or not."""
    c = cpu()
    ident = f" ({c['id']})" if c["id"] else ""
    return f"{c['model']}{ident}, {c['cores']} cores, bf16 {'native' if cpu_native_bf16() else 'emulated'}"


@functools.cache
def gpu() -> str | None:
    """The GPU's name from nvidia-smi, without importing torch; None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return ", ".join(names) or None


def hardware(dtype: str | None = None) -> dict:
    """What a manifest, train-result.json and every bench line record beside their figures."""
    c = cpu()
    rec = {"cpu": c["model"], "cpu_id": c["id"], "cpu_vendor": c["vendor"], "cpu_cores": c["cores"],
           "cpu_flags": [f for f in RECORDED_FLAGS if f in c["flags"]], "cpu_native_bf16": cpu_native_bf16(),
           "gpu": gpu()}
    if dtype is not None:
        rec["dtype"] = dtype
    return rec


def all_cores() -> str:
    """The cores this process may run on, as a vLLM CPU binding list ("0,1")."""
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
