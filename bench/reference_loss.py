"""Reference loss: rows scored per second, the figure that sizes `evaluate.reference_rows`.

    python bench/reference_loss.py [--rows 64] [--max-seq-len 512] [--batch-size 8] [--dtype auto]

Scores the plain student SmolLM2-135M-Instruct on a fixed sample (seed 0, as `reference_rows` draws it)
of AlpacaEval's GPT-4-turbo answers through evaluation.reference.reference_losses (training's
tokenisation, assistant tokens only, evaluation.metrics.row_losses). Timed: the model load, then the
scoring. One JSON line: rows/s and answer tokens/s of the scoring, the load, the mean loss, and how the
rows fit --max-seq-len (cut rows scored on their start, rows with no answer token inside it).
An experiment costs (arms x seeds + 1) such passes.
"""
from __future__ import annotations

import time

from figures import emit  # bench/ is on sys.path when a bench runs
from plain_student import STUDENT, plain_student, student_parser  # first: the repository on sys.path, the Hub offline

from curation.settings import pick_dtype
from evaluation.metrics import load_for_eval, row_losses
from evaluation.reference import fit, load_reference


def main() -> None:
    ap = student_parser(__doc__)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=512)
    args = ap.parse_args()
    student = plain_student()
    ref = load_reference("alpaca_eval", rows=args.rows)
    t0 = time.perf_counter()
    model, tok = load_for_eval(student, "lora", args.dtype)
    loaded = time.perf_counter()
    nll, tokens = row_losses(model, tok, ref.select("messages"), args.max_seq_len, args.batch_size)
    done = time.perf_counter()
    f = fit(ref, tok, args.max_seq_len)
    secs = done - loaded
    emit(str(pick_dtype(args.dtype)), figure="reference_loss_rows_per_s", reference="alpaca_eval",
         model=STUDENT, rows=ref.height, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
         rows_per_s=round(ref.height / secs, 2), answer_tokens_per_s=round(int(tokens.sum()) / secs, 1),
         score_s=round(secs, 2), load_s=round(loaded - t0, 2), answer_tokens=int(tokens.sum()),
         loss=round(float(nll.sum() / tokens.sum()), 4), truncated_rows=f["truncated"],
         unscorable_rows=f["unscorable"])


if __name__ == "__main__":
    main()
