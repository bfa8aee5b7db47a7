"""Held-out metrics: loss on reference answers, generation, and short-answer task metrics.

Loss is measured exactly as training measures it (training.data.tokenize_conversations: the
student's chat template, assistant tokens only, cut at `max_seq_len`), one row at a time, so that
an arm's score can be resampled by row and broken down by slice.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl

from evaluation.files import ADAPTER_CONFIG
from training.data import IGNORE, tokenize_conversations


def row_losses(model, tokenizer, df: pl.DataFrame, max_seq_len: int, batch_size: int = 8,
               progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out row: (sum of answer-token negative log-likelihoods, answer tokens scored).

    Rows whose answer falls entirely past `max_seq_len` score 0 tokens (and carry no weight).
    """
    import torch

    encoded = tokenize_conversations(df, tokenizer, max_seq_len)
    nll = np.zeros(len(encoded))
    count = np.zeros(len(encoded), dtype=np.int64)
    # Length-sorted batches waste little on padding; results go back to row order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for batch in (progress(batches, "held-out loss", len(batches)) if progress else batches):
        rows = [encoded[i] for i in batch if any(t != IGNORE for t in encoded[i]["labels"][1:])]
        idx = [i for i in batch if any(t != IGNORE for t in encoded[i]["labels"][1:])]
        if not rows:
            continue
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n] = torch.tensor(r["input_ids"])
            labels[j, :n] = torch.tensor(r["labels"])
            mask[j, :n] = 1
        # Token t is predicted from position t-1 (as in the causal-LM loss used in training); only
        # the positions that predict an answer token need the (vocabulary-sized) output projection.
        target = labels[:, 1:]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = target != IGNORE
        per_token = _answer_nll(model, ids.to(dev), mask.to(dev), keep.to(dev), target.to(dev))
        for j, chunk in enumerate(torch.split(per_token, keep.sum(dim=1).tolist())):
            nll[idx[j]] = float(chunk.sum())
            count[idx[j]] = int(chunk.numel())
    model.train(was_training)
    return nll, count


def _answer_nll(model, ids, mask, keep, target):
    """Negative log-likelihood of every answer token, row-major (row 0's tokens first)."""
    import torch

    with torch.no_grad():
        try:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # [n_kept, V]
        except TypeError:  # a model without `logits_to_keep`: project everything, then pick
            logits = model(input_ids=ids, attention_mask=mask).logits[keep]
        if logits.dim() == 3:  # the model took the argument but kept every position
            logits = logits[keep]
        wanted = target[keep[:, :-1]]
        # float32 for the softmax, in slices so a big vocabulary never needs all of it at once
        out = [torch.nn.functional.cross_entropy(logits[i:i + 2048].float(), wanted[i:i + 2048], reduction="none")
               for i in range(0, logits.shape[0], 2048)]
    return torch.cat(out) if out else torch.zeros(0)


def loss_summary(nll: np.ndarray, count: np.ndarray) -> dict:
    """Token-weighted mean loss over all scored answer tokens, and its perplexity."""
    tokens = int(count.sum())
    loss = float(nll.sum() / tokens) if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": tokens,
            "rows_scored": int((count > 0).sum())}


def prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str]:
    """The conversation up to its last assistant turn, and that turn (the reference answer)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return list(messages[:i]), messages[i]["content"]
    return list(messages), ""


def generate_answers(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256,
                     batch_size: int = 8, max_prompt_tokens: int = 1024,
                     progress: Callable | None = None) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding; long prompts keep their end."""
    import torch

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = next(model.parameters()).device
    answers = [""] * len(prompts)
    was_training = model.training
    model.eval()
    for batch in (progress(batches, "generate", len(batches)) if progress else batches):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            n = len(encoded[i])
            if n:
                ids[j, width - n:] = torch.tensor(encoded[i])
                mask[j, width - n:] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for j, i in enumerate(batch):
            answers[i] = tokenizer.decode(out[j, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return answers


def load_for_eval(model_path: str | Path, method: str, compute_dtype: str = "auto", *,
                  adapter_dir: str | Path | None = None, cache_dir: Path | None = None):
    """(model, tokenizer) for scoring: the student, with a trained adapter on top if given.

    A `full` fine-tune saves a whole model instead of an adapter: then that folder is the model.
    """
    from training.model import load_student

    if adapter_dir is not None and not (Path(adapter_dir) / ADAPTER_CONFIG).is_file():
        return load_student(adapter_dir, "lora" if method == "full" else method, compute_dtype, for_training=False)
    model, tok = load_student(model_path, method if method != "full" else "lora", compute_dtype,
                              for_training=False, cache_dir=cache_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        model.eval()
    return model, tok


# --- short-answer task metrics (SQuAD-style normalisation) ---------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def references_are_short(references: Iterable[str], max_words: int) -> bool:
    lengths = [len(r.split()) for r in references]
    return bool(lengths) and float(np.median(lengths)) <= max_words


# --- slices: what kind of answer a held-out row has --------------------------------------

_STRUCTURE = re.compile(r"```|^\s*(?:[-*+•]|\d+[.)])\s+\S|^\s*\|.*\|\s*$|^#{1,6}\s", re.MULTILINE)


def is_structured(answer: str) -> bool:
    """Code blocks, bulleted/numbered lists, tables or headings — the shapes curation tends to favour."""
    return bool(_STRUCTURE.search(answer or ""))
