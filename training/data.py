"""Records -> token ids and labels, with the loss on assistant tokens only.

The rule lives in `curation.answer_tokens`, below training, so that curation's `select` counts answer
tokens exactly as training trains on them; training takes it from there.
"""
from __future__ import annotations

from curation.answer_tokens import IGNORE, tokenize_conversations
from curation.chat import assistant_spans

__all__ = ["IGNORE", "assistant_spans", "tokenize_conversations"]
