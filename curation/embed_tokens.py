"""A sentence-transformers model folder's tokenizer and settings, read without sentence-transformers,
transformers or torch (#30).

The OpenVINO backends run a saved IR: the model itself is not needed, only its tokens. Importing
sentence-transformers costs ~7 CPU-seconds here (transformers, torch, scikit-learn), more than
encoding a few hundred texts. `RawTokenizer` runs the folder's `tokenizer.json` with `tokenizers`, the
library behind transformers' fast tokenizers, and answers the two calls pond makes of one
(`__call__` with truncation and offsets, `pad`) with the same ids, masks and offsets
(tests/test_embed.py holds it to transformers' tokenizer).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def model_settings(path: Path) -> dict[str, Any]:
    """max_seq_length, do_lower_case and the embedding dimension of a sentence-transformers folder (its
    sentence_bert_config.json, the pooling module's config), as SentenceTransformer reads them."""
    sbert = _json(path / "sentence_bert_config.json")
    modules = _json(path / "modules.json") if (path / "modules.json").is_file() else []
    pooling = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
    dim = _json(path / pooling / "config.json").get("word_embedding_dimension")
    if dim is None:
        dim = _json(path / "config.json").get("hidden_size")
    return {"max_seq_length": sbert.get("max_seq_length"), "do_lower_case": bool(sbert.get("do_lower_case", False)),
            "dim": int(dim) if dim is not None else None,
            "model_max_length": _json(path / "tokenizer_config.json").get("model_max_length")}


class RawTokenizer:
    """`tokenizer.json` through `tokenizers`: the ids, masks and offsets of transformers' fast tokenizer
    for `tok(texts, truncation=True, max_length=n, return_offsets_mapping=...)` and right-padding `pad`."""

    is_fast = True

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tok.no_padding()
        config = _json(path / "tokenizer_config.json")
        special = _json(path / "special_tokens_map.json")
        pad = config.get("pad_token") or special.get("pad_token") or "[PAD]"
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_token_id = self._tok.token_to_id(pad)
        if self.pad_token_id is None:
            raise ValueError(f"{path}: the pad token {pad!r} is not in tokenizer.json")

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None,
                 return_offsets_mapping: bool = False) -> dict[str, list]:
        if truncation and max_length is not None:
            self._tok.enable_truncation(max_length)
        else:
            self._tok.no_truncation()
        enc = self._tok.encode_batch(texts)
        out = {"input_ids": [e.ids for e in enc], "token_type_ids": [e.type_ids for e in enc],
               "attention_mask": [e.attention_mask for e in enc]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in enc]
        return out

    def pad(self, features: dict[str, list[list[int]]], return_tensors: str = "np") -> dict[str, np.ndarray]:
        """Right-padded to the longest row: ids with the pad id, masks and token types with 0."""
        longest = max(len(row) for row in features["input_ids"])
        out = {}
        for key, rows in features.items():
            fill = self.pad_token_id if key == "input_ids" else 0
            arr = np.full((len(rows), longest), fill, dtype=np.int64)
            for i, row in enumerate(rows):
                arr[i, :len(row)] = row
            out[key] = arr
        return out
