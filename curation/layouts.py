"""Row layouts users already have, normalised to canonical `messages` (+ `text`).

Each layout maps one input row (a dict) to a list of {role, content} messages, or raises
`RowError` with a short machine-readable reason. Plain-text rows have no messages.
"""
from __future__ import annotations

from typing import Any

from curation.records import render_text

LAYOUTS = ("messages", "sharegpt", "alpaca", "prompt_response", "text")

# Role names seen in the wild (ShareGPT dumps carry the chatbot's brand name as the role).
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}

# Keys each layout consumes; every other key of the row is carried through as a user column.
LAYOUT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt_response": ("prompt", "response", "completion", "system"),
    "text": ("text",),
}


class RowError(ValueError):
    """A row that cannot become a record; `reason` is a short tag, `detail` says what was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def detect_layout(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and ("response" in row or "completion" in row):
        return "prompt_response"
    if "text" in row:
        return "text"
    raise RowError("unknown_layout", f"no known layout in keys {sorted(row)[:8]}")


def _content(value: Any, where: str) -> str:
    if value is None:
        raise RowError("missing_content", where)
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{where} is {type(value).__name__}, expected string")
    if not value.strip():
        raise RowError("empty_content", where)
    return value


def _role(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{where} role is {type(value).__name__}")
    role = ROLE_ALIASES.get(value.strip().lower())
    if role is None:
        raise RowError("unknown_role", f"{where} role {value!r}")
    return role


def _turns(turns: Any, role_key: str, content_key: str, field: str) -> list[dict[str, str]]:
    if turns is None:
        raise RowError("missing_content", field)
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"{field} is {type(turns).__name__}, expected list")
    if not turns:
        raise RowError("empty_conversation", field)
    out = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{where} is {type(turn).__name__}, expected object")
        out.append({"role": _role(turn.get(role_key), where), "content": _content(turn.get(content_key), where)})
    return out


def _optional_system(row: dict[str, Any]) -> list[dict[str, str]]:
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return []
    return [{"role": "system", "content": _content(system, "system")}]


def to_messages(row: dict[str, Any], layout: str) -> list[dict[str, str]]:
    """Messages of `row` in `layout` (empty list for plain text); raises RowError."""
    if layout == "messages":
        return _turns(row.get("messages"), "role", "content", "messages")
    if layout == "sharegpt":
        return _turns(row.get("conversations"), "from", "value", "conversations")
    if layout == "alpaca":
        instruction = _content(row.get("instruction"), "instruction")
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RowError("wrong_type", f"input is {type(extra).__name__}, expected string")
        prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return _optional_system(row) + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _content(row.get("output"), "output")},
        ]
    if layout == "prompt_response":
        answer_key = "response" if "response" in row else "completion"
        return _optional_system(row) + [
            {"role": "user", "content": _content(row.get("prompt"), "prompt")},
            {"role": "assistant", "content": _content(row.get(answer_key), answer_key)},
        ]
    if layout == "text":
        _content(row.get("text"), "text")
        return []
    raise RowError("unknown_layout", layout)


def normalise(row: Any, layout: str = "auto") -> tuple[list[dict[str, str]], str, dict[str, Any]]:
    """(messages, text, extra user columns) for one input row; raises RowError."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is {type(row).__name__}")
    chosen = detect_layout(row) if layout == "auto" else layout
    messages = to_messages(row, chosen)
    text = render_text(messages) if messages else row["text"]
    consumed = set(LAYOUT_KEYS[chosen])
    extras = {}
    for key, value in row.items():
        if key in consumed:
            continue
        # The canonical columns belong to pond; a user's own `id`/`source`/`text` is kept under orig_*.
        name = f"orig_{key}" if key in ("id", "messages", "text", "source", "stage", "reason") else key
        extras[name] = value
    return messages, text, extras
