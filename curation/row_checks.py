"""What every ingested row must be before its layout is read: text that can be written as UTF-8, and
a nesting a reader can walk.

The Unicode rule (written here once; docs/in-and-out.md): a row any of whose strings (values or
keys, at any depth) holds a lone UTF-16 surrogate (U+D800..U+DFFF, which JSON's `\\ud800` escape
can make but UTF-8 cannot hold), a NUL, or another C0 control character except the whitespace
ones (tab, line feed, vertical tab, form feed, carriage return) is rejected as `invalid_unicode`,
naming the field and the code point. Such rows are not repaired: a surrogate half or a control byte is a sign of text cut or
decoded wrongly, and a silent repair would train on the damage. A row nested deeper than
MAX_DEPTH is rejected as `too_deep`.
"""
from __future__ import annotations

import re
from typing import Any

from curation.layouts import RowError

MAX_DEPTH = 64
# C0 controls but the whitespace ones (\t \n \v \f \r), and surrogate halves
_INVALID = re.compile("[\x00-\x08\x0e-\x1f\ud800-\udfff]")


# In JSON text, a control character or a surrogate half can only be written as a \u escape (a raw
# one is a JSON error); a line without such an escape or a raw control character, and with fewer
# brackets than MAX_DEPTH, cannot break the rule. A line with one (a valid surrogate pair too) is walked.
_RAW_ESCAPE = re.compile(r"\\u(?:00[01]|d[89a-f])", re.IGNORECASE)
# the same control characters as bytes: UTF-8 writes them as themselves and uses no byte below 0x80
# in any other character, so deleting them from the encoded text is a C-speed scan (a character
# class regex over the text costs 6x more)
_CONTROL_BYTES = bytes(range(0x00, 0x09)) + bytes(range(0x0E, 0x20))


def _raw_clean(raw: str) -> bool:
    if raw.count("[") + raw.count("{") >= MAX_DEPTH:
        return False
    data = raw.encode("utf-8", "surrogatepass")
    return len(data.translate(None, _CONTROL_BYTES)) == len(data) and _RAW_ESCAPE.search(raw) is None


def safe_text(text: str) -> str:
    """`text` with anything UTF-8 cannot hold written as a backslash escape (for previews and details)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "row"


def _bad_char(text: str, where: str) -> RowError | None:
    found = _INVALID.search(text)
    if found is None:
        return None
    code = ord(found.group())
    what = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else ("a NUL" if code == 0 else "a control character")
    return RowError("invalid_unicode", f"{where} holds {what} U+{code:04X} at character {found.start()}")


def check_row(row: Any, raw: str = "") -> None:
    """Raise RowError(`invalid_unicode` or `too_deep`) if the row breaks the rule above. `raw`, the
    row's JSON text where there is one, lets most rows pass without walking them."""
    if raw and _raw_clean(raw):
        return
    stack: list[tuple[Any, tuple, int]] = [(row, (), 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if (err := _bad_char(value, _where(path))) is not None:
                raise err
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise RowError("too_deep", f"{_where(path)} is nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and (err := _bad_char(key, _where(path) + " key")) is not None:
                    raise err
                stack.append((item, (*path, key), depth + 1))
