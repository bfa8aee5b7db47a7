"""The command a user waits for: `pond run` with semantic_dedup + select on real long documents, cold
caches, against a plain sentence-transformers encode of the same texts in its own process (#30).

    python bench/embed_e2e.py [--docs 5000] [--backends torch,openvino,openvino-int8]

Input: the first `--docs` ShareGPT conversations (most are longer than MiniLM's 256 tokens), written as
JSONL. Each pond arm is `pond run` on a recipe of two steps, both on the same embedding backend:

    semantic_dedup: {eps: 0.07, embedding: {backend: B}}
    select: {n: docs/4, strategy: kcenter, embedding: {backend: B}}

with a fresh POND_CACHE_DIR, so nothing is cached ("all cold"): the model loads, the OpenVINO IR is converted
(and for openvino-int8 quantised) inside the timing, and every text is encoded. The OpenVINO backends run
again with their IR already built ("model prepared": a machine's second pond run, embeddings still cold).
The baseline is a child process that loads all-MiniLM-L6-v2 with sentence-transformers and encodes the texts
pond embeds (the rows' `text` column, read from pond's ingest output) with `encode(normalize_embeddings=True)`:
fp32, batch 32, defaults. The arms run one after another (the plain one after the first pond run, whose
ingest output it reads). One JSON line per command and one per ratio: wall and CPU seconds (the child's,
user + system), with the load around it. On a shared machine the CPU-second ratio is the steadier figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)
from minhash import pond_command, timed_child  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.embed import default_model_path  # noqa: E402
from curation.sources import iter_sharegpt  # noqa: E402

PLAIN = """import sys, polars as pl
from sentence_transformers import SentenceTransformer
texts = pl.read_parquet(sys.argv[2])["text"].to_list()
SentenceTransformer(sys.argv[1], device="cpu").encode(texts, normalize_embeddings=True)
print(len(texts))
"""


def write_docs(path: Path, docs: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in iter_sharegpt(limit=docs):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_recipe(folder: Path, data: Path, backend: str, docs: int) -> Path:
    emb = f"{{backend: {backend}}}"
    recipe = folder / f"embed-{backend}.yaml"
    recipe.write_text(f"name: embed-{backend}\ninput: {{path: {json.dumps(str(data))}}}\nseed: 0\nsteps:\n"
                      f"  - semantic_dedup: {{eps: 0.07, embedding: {emb}}}\n"
                      f"  - select: {{n: {docs // 4}, strategy: kcenter, embedding: {emb}}}\n")
    return recipe


def ingested_texts(run_dir: Path) -> Path:
    """The rows pond embedded (ingest's output): the plain arm encodes exactly these texts."""
    return next((run_dir / "steps").glob("*-ingest")) / "kept.parquet"


def pond_arm(args, work: Path, data: Path, backend: str, prepared: Path | None = None) -> tuple[dict, Path, Path]:
    """One `pond run` on a fresh cache dir; `prepared`: a cache dir whose converted models are copied in first."""
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{backend}-", dir=work))
    if prepared is not None:
        shutil.copytree(prepared / "openvino", cache / "openvino")
    env = {**os.environ, "POND_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{backend}-", dir=work))
    r = timed_child(pond_command(write_recipe(work, data, backend, args.docs), run_dir), env)
    arm = backend + (", model prepared" if prepared is not None else ", all cold")
    emit(figure="embed_e2e_command_seconds", tool=f"pond run ({arm})", docs=args.docs,
         wall_s=r["wall_s"], cpu_s=r["cpu_s"], load_before=r["load_before"], load_after=r["load_after"])
    return {**r, "arm": arm}, run_dir, cache


def run_arms(args, work: Path, data: Path) -> tuple[dict, list[dict]]:
    """Every backend all cold; the OpenVINO ones again with their IR already built (a machine's second run:
    embeddings still cold). The plain encode runs after the first pond run, whose ingest output it reads."""
    plain, runs = None, []
    for backend in args.backends.split(","):
        r, run_dir, cache = pond_arm(args, work, data, backend)
        runs.append(r)
        if plain is None:
            plain = plain_arm(ingested_texts(run_dir), args.docs)
        if backend.startswith("openvino"):
            runs.append(pond_arm(args, work, data, backend, prepared=cache)[0])
    return plain, runs


def plain_arm(texts: Path, docs: int) -> dict:
    r = timed_child([sys.executable, "-c", PLAIN, str(default_model_path()), str(texts)],
                    {**os.environ, "HF_HUB_OFFLINE": "1"})
    emit(figure="embed_e2e_command_seconds", tool="plain SentenceTransformer.encode", docs=docs,
         texts=int(r["stdout"].strip() or 0), wall_s=r["wall_s"], cpu_s=r["cpu_s"], load_before=r["load_before"],
         load_after=r["load_after"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--backends", default="torch,openvino,openvino-int8")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pond-embed-e2e-"))
    data = work / "docs.jsonl"
    write_docs(data, args.docs)
    plain, runs = run_arms(args, work, data)
    for r in runs:
        emit(figure="embed_e2e_ratio_plain_to_pond", arm=r["arm"], docs=args.docs,
             wall_ratio=round(plain["wall_s"] / r["wall_s"], 2), cpu_ratio=round(plain["cpu_s"] / r["cpu_s"], 2),
             target=3.0)


if __name__ == "__main__":
    main()
