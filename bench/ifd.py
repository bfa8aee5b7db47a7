"""IFD scoring: pond's `ifd` step against a plain transformers loop (one row at a time, same model).

    python bench/ifd.py [--rows 200] [--chunks 4] [--dtype auto] [--max-seq-len 1024] [--batch-size 8] [--threads N]

Rows: the first `--rows` real ShareGPT conversations with an assistant answer after some other turn
(curation.sources.iter_sharegpt -> curation.ingest.records_from_dicts). Model: the student,
SmolLM2-135M-Instruct from $POND_CACHE_DIR/models/ (scripts/prepare_models.py).

- plain: for each row, the last assistant turn's prompt rendered with `apply_chat_template(...,
  add_generation_prompt=True)`, the answer as content + eos, the header as the generation prompt's
  own text; prompt + answer cut to max_seq_len (start kept); two `model(input_ids, labels=...)`
  calls (transformers' own shifted loss), batch 1, no padding.
- pond: `curation.ifd.score_rows` with the step's options and a fresh cache directory (cache
  writes included).

Both score the same rows in the same `--chunks` slices, alternating (plain, pond, ...), so that other
load on a shared machine falls on both alike; model loading is outside both timings. Prints one
JSON line per figure: rows/s for both and their ratio, the largest difference in ifd and
answer_ppl between them, and the time to get every row again from pond's cache.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curation import ifd as ifd_mod  # noqa: E402
from curation.ifd import DEFAULT_MODEL, IfdOptions, Scorer, score_rows  # noqa: E402
from curation.ingest import records_from_dicts  # noqa: E402
from curation.settings import default_cache_dir  # noqa: E402
from curation.sources import iter_sharegpt  # noqa: E402


def sharegpt_conversations(n: int) -> list[list[dict]]:
    df = records_from_dicts(list(iter_sharegpt(limit=2 * n + 100)), source="sharegpt")
    # a last answer with a turn before it: the plain loop's template call refuses an empty prompt
    convs = [m for m in df["messages"].to_list()
             if any(t["role"] == "assistant" and t["content"].strip() and i > 0 for i, t in enumerate(m))]
    if len(convs) < n:
        raise SystemExit(f"only {len(convs)} ShareGPT conversations with an answer available")
    return convs[:n]


def plain_ifd(model, tok, conv: list[dict], max_seq_len: int) -> tuple[float, float]:
    """(ifd, answer_ppl) of the last assistant turn, written with transformers alone; NaN if unscorable."""
    import torch

    last = max(i for i, m in enumerate(conv) if m["role"] == "assistant" and m["content"].strip())
    prompt = tok.apply_chat_template(conv[:last], tokenize=False, add_generation_prompt=True)
    header = prompt[len(tok.apply_chat_template(conv[:last], tokenize=False)):]
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    p, h = enc(prompt), enc(header)
    a = enc(conv[last]["content"] + tok.eos_token)[: max(0, max_seq_len - len(p))]  # a prompt past the limit: none
    if not a:
        return math.nan, math.nan

    def loss(context: list[int]) -> float:
        with torch.inference_mode():
            return float(model(input_ids=torch.tensor([context + a]),
                               labels=torch.tensor([[-100] * len(context) + a])).loss)

    cond = loss(p)
    return cond / loss(h), math.exp(cond)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--max-seq-len", type=int, default=IfdOptions().max_seq_len)
    ap.add_argument("--batch-size", type=int, default=IfdOptions().batch_size)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both loops; default: every CPU "
                                                               "this process may use (1 is steadier on a shared machine)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from curation.embed import machine_threads

    torch.set_num_threads(args.threads or machine_threads())
    convs = sharegpt_conversations(args.rows)
    opts = IfdOptions(dtype=args.dtype, max_seq_len=args.max_seq_len, batch_size=args.batch_size, threads=args.threads)
    scorer = Scorer(opts, default_cache_dir())
    _ = scorer.model  # loaded once, outside the timings
    opts = opts.model_copy(update={"model": str(scorer.path)})  # the score cache goes to a fresh folder below
    plain_model = AutoModelForCausalLM.from_pretrained(
        scorer.path, dtype=torch.bfloat16 if scorer.dtype == "bf16" else torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(scorer.path)

    cache = Path(tempfile.mkdtemp(prefix="pond-ifd-bench-"))
    load_before = os.getloadavg()[0]
    pond_vals, plain_vals = [], []
    t_pond = t_plain = 0.0
    bounds = np.linspace(0, len(convs), args.chunks + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        t = time.perf_counter()
        plain_vals += [plain_ifd(plain_model, tok, c, args.max_seq_len) for c in convs[a:b]]
        t_plain += time.perf_counter() - t
        t = time.perf_counter()
        v = score_rows(convs[a:b], opts, cache)
        t_pond += time.perf_counter() - t
        with np.errstate(divide="ignore", invalid="ignore"):
            pond_vals += [(c / s, math.exp(c)) if k > 0 else (math.nan, math.nan) for c, s, k in v]
    pond_arr, plain_arr = np.array(pond_vals), np.array(plain_vals)
    both = np.isfinite(pond_arr[:, 0]) & np.isfinite(plain_arr[:, 0])
    label = {"bench": "ifd", "model": DEFAULT_MODEL, "rows": len(convs), "max_seq_len": args.max_seq_len,
             "batch_size": args.batch_size, "dtype": scorer.dtype, "threads": torch.get_num_threads(),
             "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}  # before and after: other work
    # on a shared machine slows both loops
    emit(**label, figure="rows_per_second", pond=round(len(convs) / t_pond, 3),
         plain=round(len(convs) / t_plain, 3), ratio=round(t_plain / t_pond, 2),
         pond_seconds=round(t_pond, 2), plain_seconds=round(t_plain, 2))
    diff = np.abs(pond_arr[both, 0] - plain_arr[both, 0])
    ppl_abs = np.abs(pond_arr[both, 1] - plain_arr[both, 1])
    ppl_rel = ppl_abs / plain_arr[both, 1]
    emit(**label, figure="agreement", scored=int(both.sum()),
         unscorable_pond=int((~np.isfinite(pond_arr[:, 0])).sum()),
         unscorable_plain=int((~np.isfinite(plain_arr[:, 0])).sum()),
         max_abs_diff_ifd=float(diff.max()), p99_abs_diff_ifd=float(np.percentile(diff, 99)),
         max_abs_diff_answer_ppl=float(ppl_abs.max()), max_rel_diff_answer_ppl=float(ppl_rel.max()),
         within_1e_4=bool(diff.max() <= 1e-4 and ppl_rel.max() <= 1e-4))  # ppl relative: float32 losses
    # carry ~7 digits, so a perplexity in the thousands differs by more than 1e-4 in absolute terms
    before = ifd_mod.counters["forward_passes"]
    t = time.perf_counter()
    score_rows(convs, opts, cache)
    emit(**label, figure="cached_rerun_seconds", seconds=round(time.perf_counter() - t, 3),
         forward_passes=ifd_mod.counters["forward_passes"] - before,
         first_run_seconds=round(t_pond, 2))


if __name__ == "__main__":
    main()
