"""Row layouts users already have, normalised to canonical `messages` (+ `text`).

Each layout maps one input row (a dict) to a list of {role, content} messages, or raises
`RowError` with a short machine-readable reason. Plain-text rows have no messages.

A column map (`input.columns`) says which of a file's own keys play a layout's parts, e.g.
`{prompt: question, response: answer}` or `{messages: dialog, role: speaker, content: text}`:
top-level names are renamed before the layout is detected, `role`/`content` name the keys inside
each turn of `messages` or `conversations`. A mapped key missing from a row is a rejection.
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
# Keys inside one turn, by layout; a column map's `role`/`content` replace them.
TURN_KEYS = {"messages": ("role", "content"), "sharegpt": ("from", "value")}
# The names a column map may give: every layout key, and the two keys of a turn.
MAPPABLE = tuple(sorted({k for keys in LAYOUT_KEYS.values() for k in keys} | {"role", "content"}))


class RowError(ValueError):
    """A row that cannot become a record; `reason` is a short tag, `detail` says what was wrong."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def detect_layout(row: dict[str, Any]) -> str:
    # pond's own records (curated.parquet, an hf export) hold plain text as `text` with empty `messages`
    if "messages" in row and not (row["messages"] in ([], None) and isinstance(row.get("text"), str)):
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and ("response" in row or "completion" in row):
        return "prompt_response"
    if "text" in row:
        return "text"
    raise RowError("unknown_layout", f"no known layout in keys {sorted(row)[:8]} "
                                     "(name your keys with input.columns)")


def _content_parts(parts: list, where: str) -> str:
    """OpenAI's list-of-parts content: the text parts joined by newlines. A part pond has no use for
    (image, audio, file, tool output) rejects the row, naming it, rather than dropping it silently."""
    texts = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(kind, str):
            raise RowError("non_text_part", f"{where}: content part {i} is of type {kind!r}; pond trains on text only")
        else:
            raise RowError("wrong_type", f"{where}: content part {i} is not an object with a `type`")
    return "\n".join(texts)


def _content(value: Any, where: str, parts: bool = True) -> str:
    if value is None:
        raise RowError("missing_content", where)
    if parts and isinstance(value, list):
        value = _content_parts(value, where)
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


def _turns(turns: Any, role_key: str, content_key: str, field: str, mapped: tuple[str, ...] = ()
           ) -> list[dict[str, str]]:
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
        for key in mapped:
            if key not in turn:
                raise RowError("missing_column", f"{where} has no key {key!r} (input.columns)")
        out.append({"role": _role(turn.get(role_key), where), "content": _content(turn.get(content_key), where)})
    return out


def _optional_system(row: dict[str, Any]) -> list[dict[str, str]]:
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return []
    return [{"role": "system", "content": _content(system, "system")}]


def to_messages(row: dict[str, Any], layout: str, columns: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Messages of `row` in `layout` (empty list for plain text); raises RowError. `columns` may
    rename the keys inside a turn (`role`, `content`)."""
    if layout in TURN_KEYS:
        field = LAYOUT_KEYS[layout][0]
        role_key, content_key = ((columns or {}).get(k, default) for k, default in zip(("role", "content"),
                                                                                      TURN_KEYS[layout]))
        mapped = tuple((columns or {})[k] for k in ("role", "content") if k in (columns or {}))
        return _turns(row.get(field), role_key, content_key, field, mapped)
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
        _content(row.get("text"), "text", parts=False)  # a document is a string; parts belong to turns
        return []
    raise RowError("unknown_layout", layout)


def map_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """`row` with its mapped keys renamed to pond's names (turn keys are left to `to_messages`).
    A key of pond's name that the map does not fill stays as `orig_<name>`, so nothing is lost."""
    renames = {file_key: name for name, file_key in columns.items() if name not in ("role", "content")}
    for file_key, name in renames.items():
        if file_key not in row:
            raise RowError("missing_column", f"no key {file_key!r} (input.columns.{name})")
    out = {}
    for key, value in row.items():
        if key in renames:
            out[renames[key]] = value
        elif key in renames.values():
            out[f"orig_{key}"] = value
        else:
            out[key] = value
    return out


def mapped_keys_present(row: Any, columns: dict[str, str]) -> set[str]:
    """The file keys of `columns` that this raw row has (turn keys: in any of its turns), so ingest
    can tell a map naming keys no row has from rows that lack them here and there."""
    if not isinstance(row, dict):
        return set()
    present = {k for name, k in columns.items() if name not in ("role", "content") and k in row}
    turn_keys = {columns[n] for n in ("role", "content") if n in columns}
    if turn_keys:
        names = {columns.get(f, f) for f in ("messages", "conversations")}
        for field in names:
            turns = row.get(field)
            if isinstance(turns, list):
                present |= {k for t in turns if isinstance(t, dict) for k in turn_keys if k in t}
    return present


def normalise(row: Any, layout: str = "auto", columns: dict[str, str] | None = None
              ) -> tuple[list[dict[str, str]], str, dict[str, Any]]:
    """(messages, text, extra user columns) for one input row, its keys renamed by `columns` first;
    raises RowError."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is {type(row).__name__}")
    if columns:
        row = map_columns(row, columns)
    chosen = detect_layout(row) if layout == "auto" else layout
    messages = to_messages(row, chosen, columns)
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
