"""One JSON object per row in the layouts trainers read, each with the rules its readers enforce.

A row a format cannot hold is never dropped silently: it goes to `problems.jsonl` beside the data
(its id and the rule it breaks), and the count is printed.

- openai: `{"messages": [{role, content}]}`, OpenAI's chat fine-tuning rules: roles system/user/
  assistant, a system message only first, at least one assistant message, none of them empty.
- sharegpt: `{"id", "conversations": [{from: system|human|gpt, value}]}`.
- alpaca: `{"id", "instruction", "input", "output"[, "system"]}`: one instruction, one answer.
- llama-factory: ShareGPT rows as LLaMA-Factory's converter accepts them (data/README.md of
  hiyouga/LLaMA-Factory): an optional system turn first, then human/gpt turns alternating, ending
  with gpt; a row that breaks this is one it would skip with "Invalid role tag" / "message count".
- axolotl: `{"id", "messages": [{role, content}]}` for Axolotl's `chat_template` type; a row needs
  an assistant turn to train on (roles_to_train: assistant).
- dpo (a preference pair, pond/export/dpo.py): TRL's `{"id", "prompt", "chosen", "rejected"}`, and the same
  pair in LLaMA-Factory's ShareGPT preference layout; a prompt ending on a user turn (optional system turn
  first, then alternating), and one non-empty assistant answer on each side.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from curation import store
from curation.records import ROLES

Messages = list[dict[str, Any]]
Check = Callable[[Messages], str | None]
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


# --- the rules, each once ------------------------------------------------------------------------

def has_messages(messages: Messages) -> str | None:
    return None if messages else "no_messages: a plain-text row has no conversation"


def known_roles(messages: Messages) -> str | None:
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            return f"unknown_role: messages[{i}] role {m.get('role')!r}"
    return None


def system_first(messages: Messages) -> str | None:
    for i, m in enumerate(messages):
        if m.get("role") == "system" and i > 0:
            return f"system_not_first: messages[{i}] is a system message"
    return None


def has_assistant(messages: Messages) -> str | None:
    return None if any(m.get("role") == "assistant" for m in messages) else "no_assistant_turn"


def nonempty_content(messages: Messages) -> str | None:
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            kind = "empty_assistant_turn" if m.get("role") == "assistant" else "empty_content"
            return f"{kind}: messages[{i}]"
    return None


def alternates(messages: Messages) -> str | None:
    turns = messages[1:] if messages and messages[0].get("role") == "system" else messages
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want:
            return f"not_alternating: turn {i} after the system message is {m.get('role')!r}, expected {want!r}"
    if len(turns) % 2:
        return "not_alternating: the conversation ends without an assistant turn"
    return None


def single_turn(messages: Messages) -> str | None:
    roles = [m.get("role") for m in messages]
    if roles in (["user", "assistant"], ["system", "user", "assistant"]):
        return None
    return f"not_single_turn: alpaca holds one instruction and one answer, this row has roles {roles}"


def pair_shape(messages: Messages) -> str | None:
    """A pair as one list (the prompt's turns, then the chosen and the rejected answer): what TRL, Axolotl's
    DPO `chat_template.default` and LLaMA-Factory's ranking converter all read."""
    if len(messages) < 3:
        return "no_pair: a pair needs a prompt, a chosen and a rejected answer"
    *prompt, chosen, rejected = messages
    for side, m in (("chosen", chosen), ("rejected", rejected)):
        if m.get("role") != "assistant":
            return f"not_an_answer: the {side} side is a {m.get('role')!r} turn"
    return alternates([*prompt, chosen])


def first_problem(messages: Messages, checks: Iterable[Check]) -> str | None:
    for check in checks:
        problem = check(messages)
        if problem:
            return problem
    return None


# --- the records ---------------------------------------------------------------------------------

def _plain(messages: Messages) -> Messages:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def openai_record(row_id: str, messages: Messages) -> dict[str, Any]:
    return {"messages": _plain(messages)}  # OpenAI's file holds nothing else per line


def messages_record(row_id: str, messages: Messages) -> dict[str, Any]:
    return {"id": row_id, "messages": _plain(messages)}


def sharegpt_record(row_id: str, messages: Messages) -> dict[str, Any]:
    return {"id": row_id, "conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]}
                                            for m in messages]}


def alpaca_record(row_id: str, messages: Messages) -> dict[str, Any]:
    out = {"id": row_id, "instruction": messages[-2]["content"], "input": "", "output": messages[-1]["content"]}
    if messages[0]["role"] == "system":
        out["system"] = messages[0]["content"]
    return out


def trl_pair_record(row_id: str, messages: Messages) -> dict[str, Any]:
    *prompt, chosen, rejected = _plain(messages)
    return {"id": row_id, "prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


def sharegpt_pair_record(row_id: str, messages: Messages) -> dict[str, Any]:
    *prompt, chosen, rejected = sharegpt_record(row_id, messages)["conversations"]
    return {"id": row_id, "conversations": prompt, "chosen": chosen, "rejected": rejected}


BASE = (has_messages, known_roles, nonempty_content)
PAIR_RULES = (*BASE, system_first, pair_shape)
# format -> (rules, record)
CHAT_FORMATS: dict[str, tuple[tuple[Check, ...], Callable[[str, Messages], dict[str, Any]]]] = {
    "openai": ((*BASE, system_first, has_assistant), openai_record),
    "sharegpt": (BASE, sharegpt_record),
    "alpaca": ((*BASE, single_turn), alpaca_record),
    "llama-factory": ((*BASE, alternates), sharegpt_record),
    "axolotl": ((*BASE, has_assistant), messages_record),
}


def write_rows(rows: Iterable[tuple[str, Messages]], fmt: str, data: Path, problems: Path) -> tuple[int, int]:
    """Write (id, messages) rows as `fmt` to `data` (JSONL); rows that break its rules go to `problems`."""
    checks, record = CHAT_FORMATS[fmt]
    return write_checked(rows, checks, record, data, problems)


def write_checked(rows: Iterable[tuple[str, Messages]], checks: tuple[Check, ...],
                  record: Callable[[str, Messages], dict[str, Any]], data: Path, problems: Path) -> tuple[int, int]:
    """Write `record(id, messages)` per row to `data` (JSONL); rows that break one of `checks` go to
    `problems` as {id, reason}, a file left out (an older one removed) when no row breaks one. Each is
    written whole or not at all (curation.store). Returns (rows written, rows listed as problems)."""
    good, bad = [], []
    for row_id, messages in rows:
        problem = first_problem(messages or [], checks)
        if problem:
            bad.append(json.dumps({"id": row_id, "reason": problem}, ensure_ascii=False) + "\n")
        else:
            good.append(json.dumps(record(row_id, messages), ensure_ascii=False) + "\n")
    store.write_text("".join(good), data)
    if bad:
        store.write_text("".join(bad), problems)
    else:
        problems.unlink(missing_ok=True)
    return len(good), len(bad)
