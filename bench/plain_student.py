"""What the benches of the plain student (SmolLM2-135M-Instruct, no adapter) share: the repository on
sys.path and the Hub offline before anything imports transformers, the options every such bench takes
(--batch-size, --dtype), and the student itself, resolved with the project's thread setting."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curation.settings import DEFAULT_STUDENT as STUDENT  # noqa: E402
from training.model import resolve_student, set_threads  # noqa: E402


def student_parser(doc: str | None, batch_help: str | None = None) -> argparse.ArgumentParser:
    """The bench's parser (its docstring as the description), with --batch-size and --dtype."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8, help=batch_help)
    ap.add_argument("--dtype", default="auto")
    return ap


def plain_student() -> Path:
    """The student's folder, after pinning torch's threads as every pond run does."""
    set_threads()
    return resolve_student(STUDENT)
