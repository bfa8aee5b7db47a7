"""An answer's prose: the text with its code, formulas, tables and markup taken out.

Gopher's and C4's web-text rules (symbol ratio, non-alpha ratio, word length, n-gram repetition) were
tuned on web pages. Code, formulas and math notation break them by construction: GSM8K's calculator
notes `<<16-3-4=9>>` and final `#### 18`, a `#include`, CSS colours `#3d7b7b`, a table of figures.
So those rules read the prose alone (curation.heuristics), and so does language identification
(curation.answer_faults). Taken out:
- fenced code blocks (``` or ~~~; an unclosed fence runs to the end), display math ($$...$$, \\[...\\]),
- inline code, inline math (\\(...\\), $...$ holding a backslash, ^, _ or {), calculator notes <<...>>, URLs,
- table markup: the separator row (| --- | --- |) and the pipes (a table's cells are prose or numbers),
- code and formula lines: indented by four spaces or a tab (list items aside), holding '=', a call
  `name(`, '->', '::', '&&', '||' or '++', ending in ';', '{' or '}', or opening with a keyword
  (`def`, `import`, `return`, `#include`, `//`, a block header `if ...:`, ...);
- markdown heading markers ('## Title' reads 'Title', so `#### 18` is the number 18).
Every pattern is one regex that Python's `re` and polars (Rust regex) read alike: `prose` and
`prose_expr` apply the same list.
"""
from __future__ import annotations

import re

import polars as pl

_CODE_LINE = (
    r"(?m)^(?:[ ]{4}|\t)[ \t]*[^-*+•0-9 \t].*$"
    r"|^.*(?:=|\w\(|->|::|&&|\|\||\+\+|[;{}][ \t]*$).*$"
    r"|^[ \t]*(?:(?:if|elif|else|for|while|try|except|finally|with|def|class|switch|case)\b.*:"
    r"|import \w.*|from [\w.]+ import .*|return\b.*|pass|break|continue|@\w.*|#include.*|#define.*"
    r"|//.*|/\*.*|\*/.*)[ \t]*$"
)
# (pattern, replacement) in order: blocks before lines, lines before markers.
PROSE_PATTERNS: list[tuple[str, str]] = [
    (r"(?s)```.*?(?:```|$)", "\n"),
    (r"(?s)~~~.*?(?:~~~|$)", "\n"),
    (r"(?s)\$\$.*?\$\$", "\n"),
    (r"(?s)\\\[.*?\\\]", "\n"),
    (r"`[^`\n]*`", " "),
    (r"\\\(.*?\\\)", " "),
    (r"\$[^$\n]*[\\^_{][^$\n]*\$", " "),
    (r"<<[^<>\n]*>>", " "),
    (r"https?://[^\s)>\]]+", " "),
    (_CODE_LINE, ""),
    (r"(?m)^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", ""),
    (r"\|", " "),
    (r"(?m)^[ \t]*#{1,6}[ \t]+", ""),
]
_COMPILED = [(re.compile(p), r) for p, r in PROSE_PATTERNS]
_CODE_LINE_RE = re.compile(_CODE_LINE)


def is_code_line(line: str) -> bool:
    """Does one line (indentation included) read as code or a formula?"""
    return bool(_CODE_LINE_RE.fullmatch(line.rstrip("\n")))


def prose(text: str) -> str:
    """The prose of one text."""
    for pattern, replacement in _COMPILED:
        text = pattern.sub(replacement, text)
    return text


def prose_expr(text: pl.Expr) -> pl.Expr:
    """The prose of every text in a column (the same patterns as `prose`)."""
    for pattern, replacement in PROSE_PATTERNS:
        text = text.str.replace_all(pattern, replacement)
    return text


# Token kinds the web-text rules tell apart (whitespace tokens of the prose): a word holds a letter;
# a number holds a digit (18, $18, 3/4, 12.5%); a bare operator (- + * / × ÷ = < >) is list or math
# notation. The rest (| --- → emoji ...) are symbols, which non_alpha_ratio counts.
WORD = r"\p{L}"
NUMBER_OR_OPERATOR = r"^(?:[^\p{L}]*\d[^\p{L}]*|[-+*/×÷=<>•])$"
