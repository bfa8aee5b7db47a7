"""Where the assistant's words are in a conversation rendered with a model's chat template.

One rule for every part that scores or trains on assistant tokens (training's loss mask, the
`ifd` scorer): templates such as SmolLM2's have no `{% generation %}` markers, so assistant spans
are found by rendering prefixes: the conversation up to turn i with the generation prompt, and up
to and including turn i; the characters between them are the assistant's (its content and the
end-of-turn token after it, so a model is scored on stopping too). Templates that re-render history
(so a prefix is not a prefix) fall back to locating the turn's content in the full rendering.

Works on any Hugging Face tokenizer object; imports nothing heavy.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _strip_end(text: str, start: int, end: int) -> int:
    # The template's newline after the end-of-turn token is layout, not something the model says.
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def assistant_spans(tokenizer, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    eos = tokenizer.eos_token or ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = end = -1
        try:
            before = render(tokenizer, messages[:i], add_generation_prompt=True)
            upto = render(tokenizer, messages[: i + 1])
            if upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
                start, end = len(before), len(upto)
        except Exception:  # some templates refuse a prefix (e.g. no user turn yet); use the fallback
            pass
        if start < 0:
            start = full.find(m["content"], cursor)
            if start < 0:
                log.warning("assistant turn %d not found in the rendered conversation; not in the loss", i)
                continue
            end = start + len(m["content"])
            if eos and full.startswith(eos, end):
                end += len(eos)
        end = _strip_end(full, start, end)
        if end > start:
            spans.append((start, end))
            cursor = end
    return full, spans


def last_assistant(messages: Sequence[dict] | None) -> int | None:
    """Index of the last assistant turn with non-blank content, or None."""
    for i in range(len(messages or ()) - 1, -1, -1):
        if messages[i]["role"] == "assistant" and (messages[i]["content"] or "").strip():
            return i
    return None


def assistant_header(tokenizer, messages: Sequence[dict]) -> str:
    """What the template puts before an assistant turn that follows `messages` (e.g.
    `<|im_start|>assistant\n`): the generation prompt's own text. Empty if the template has none."""
    before = list(messages) or [{"role": "user", "content": ""}]  # a turn to follow, for templates that need one
    try:
        plain, prompted = render(tokenizer, before), render(tokenizer, before, add_generation_prompt=True)
    except Exception:  # a template that refuses this prefix: no header
        return ""
    return prompted[len(plain):] if prompted.startswith(plain) else ""


def split_last_turn(tokenizer, messages: Sequence[dict]) -> tuple[str, str, str] | None:
    """(prompt, header, answer) for the last assistant turn: `prompt` is every earlier turn rendered
    with the template up to and including that turn's header, `answer` the turn's span (content and
    end-of-turn token), `header` the template's assistant header alone. None without an answer."""
    i = last_assistant(messages)
    if i is None:
        return None
    full, spans = assistant_spans(tokenizer, messages[: i + 1])
    if not spans:
        return None
    start, end = spans[-1]
    return full[:start], assistant_header(tokenizer, messages[:i]), full[start:end]
