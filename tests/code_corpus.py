"""A real code set that exists offline: the functions of Python's own standard library as
prompt/response rows (the docstring's first paragraph asks, the function's source answers).

Why this set: the code is real and written by people (CPython), nothing needs a download, and it
has what trips web-text rules: `#` comments, long identifiers, decorators, operators, repeated
structure. The answer is the raw source, as code sets such as MBPP, HumanEval and CodeSearchNet
store it; `fenced=True` wraps it in a Markdown fence, as a chat model writes it.
"""
from __future__ import annotations

import ast
import sysconfig
import textwrap
from pathlib import Path

# the test suites and vendored tools are not the library's own functions
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__", "ensurepip"}
MIN_DOC_WORDS = 8


def _functions(path: Path) -> list[dict]:
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node) or ""
        ask = doc.split("\n\n")[0].replace("\n", " ").strip()
        body = ast.get_source_segment(source, node, padded=True)
        if len(ask.split()) < MIN_DOC_WORDS or not body or body.count("\n") < 2:
            continue
        rows.append({"prompt": f"Write the Python function `{node.name}` ({path.stem} module): {ask}",
                     "response": textwrap.dedent(body), "where": f"{path.name}:{node.lineno}"})
    return rows


def stdlib_code_rows(limit: int | None = None, fenced: bool = False,
                     modules: tuple[str, ...] | None = None) -> list[dict]:
    """Every documented standard-library function (or `limit` of them, evenly spaced), in file order;
    `modules` ("statistics", "json/decoder", ...) reads those files only (parsing all takes minutes)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if modules is not None:
        files = [root / f"{m}.py" for m in modules]
    else:
        files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))
    rows = [row for path in files for row in _functions(path)]
    if limit is not None and len(rows) > limit:
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    if fenced:
        rows = [{**r, "response": f"```python\n{r['response'].rstrip()}\n```"} for r in rows]
    return rows
