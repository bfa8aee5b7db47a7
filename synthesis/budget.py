"""Teacher budgets and token upper bounds (used by `pond run --estimate`).

Token counts before a call are upper bounds, not guesses: the byte-level BPE tokenizers of the
supported teachers (SmolLM2, Llama, Qwen, GPT) never use more than one token per UTF-8 byte, so
a prompt costs at most its bytes plus the chat template's few tokens per message, and a reply at
most `max_tokens` per choice.
"""
from __future__ import annotations

import threading

from curation.errors import PondError

TEMPLATE_TOKENS_PER_MESSAGE = 8  # <|im_start|>role\n ... <|im_end|>\n, with room to spare
TEMPLATE_TOKENS_FIXED = 64  # a default system prompt some chat templates insert


class BudgetExceeded(PondError, RuntimeError):
    """Sending this call could exceed the teacher's request or token budget."""


def prompt_tokens_upper(messages: list[dict]) -> int:
    return TEMPLATE_TOKENS_FIXED + sum(
        TEMPLATE_TOKENS_PER_MESSAGE + len(m["content"].encode("utf-8", "surrogatepass")) for m in messages
    )


def call_tokens_upper(messages: list[dict], max_tokens: int, n: int = 1) -> int:
    return prompt_tokens_upper(messages) + max_tokens * n


class Budget:
    """Caps on the calls sent to a teacher (cache hits are free; retries of one call count once).

    Token spending is checked pessimistically: a call is let through only if the tokens already
    spent, plus the upper bounds of the calls in flight, plus its own upper bound fit in
    `max_tokens`. So the budget is never exceeded, at the price of sometimes stopping a little
    early. Once a call is refused, later ones are refused too (no odd gaps in the output).
    """

    def __init__(self, max_requests: int | None = None, max_tokens: int | None = None):
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.requests = 0
        self.tokens = 0
        self._reserved = 0
        self.exhausted: str | None = None
        self._lock = threading.Lock()

    def acquire(self, upper_tokens: int) -> int:
        """Reserve room for one call; returns the reservation to pass to `settle`."""
        with self._lock:
            if self.exhausted:
                raise BudgetExceeded(self.exhausted)
            if self.max_requests is not None and self.requests + 1 > self.max_requests:
                self.exhausted = f"teacher budget exhausted: max_requests={self.max_requests} calls sent"
                raise BudgetExceeded(self.exhausted)
            if self.max_tokens is not None and self.tokens + self._reserved + upper_tokens > self.max_tokens:
                self.exhausted = (f"teacher budget exhausted: max_tokens={self.max_tokens} "
                                  f"({self.tokens} spent, next call may take up to {upper_tokens})")
                raise BudgetExceeded(self.exhausted)
            self.requests += 1
            self._reserved += upper_tokens
            return upper_tokens

    def settle(self, reservation: int, used_tokens: int | None) -> None:
        """Replace a reservation by what the call really used (None: it failed, nothing billed)."""
        with self._lock:
            self._reserved -= reservation
            self.tokens += used_tokens or 0
