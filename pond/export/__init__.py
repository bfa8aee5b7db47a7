"""`pond export RUN --to FORMAT`: a run's rows shaped for the trainers, hubs and harnesses people use.

    hf             a `datasets` folder (save_to_disk) + a dataset card with lineage   (hub.py)
    openai         chat fine-tuning JSONL, checked against OpenAI's rules             (chat.py)
    sharegpt       ShareGPT conversations JSONL                                       (chat.py)
    alpaca         instruction/input/output JSONL                                     (chat.py)
    axolotl        messages JSONL + the `datasets:` stanza that trains on it          (chat.py, trainers.py)
    llama-factory  ShareGPT JSONL + `dataset_info.json`                               (chat.py, trainers.py)
    lm-eval        the held-out set as lm-evaluation-harness tasks                    (lm_eval.py)
    dpo            the preference pairs: TRL's JSONL, a ShareGPT pair JSONL + Axolotl's and
                   LLaMA-Factory's stanzas for it                                     (dpo.py, trainers.py)

Rows (`--rows`): curated (default; lm-eval: heldout), synthetic, rejected, heldout, or a step's kept
set (its folder name, `03-heuristics`, or its kind). A row a format cannot hold is left out of the
data file (a trainer would reject it, or the whole file) and listed in `problems.jsonl` beside it
with the rule it breaks: the set's rows = rows written + rows listed, and both counts are printed and
recorded in `.pond-export`. For `dpo` the set is its rows that carry a preference pair.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pond import layout
from pond.export.chat import CHAT_FORMATS, write_rows
from pond.export.lineage import dataset_name, lineage
from pond.export.rows import ROW_SETS, ExportError, select_rows

FORMATS = ("hf", "openai", "sharegpt", "alpaca", "axolotl", "llama-factory", "lm-eval")  # every row with a conversation
PAIR_FORMATS = ("dpo",)  # the rows with a preference pair only
MARKER = ".pond-export"  # says a folder is pond's own export, so a re-export may replace it
DATA = "data.jsonl"
PROBLEMS = "problems.jsonl"

__all__ = ["FORMATS", "PAIR_FORMATS", "ROW_SETS", "ExportError", "ExportResult", "export_run"]


@dataclass
class ExportResult:
    out: Path
    files: list[Path] = field(default_factory=list)
    rows: int = 0  # rows written to the data file
    problems: int = 0  # rows left out of it, listed in problems.jsonl
    selected: int = 0  # rows of the row set: rows + problems
    fmt: str = ""
    unpaired: int = 0  # rows of the row set without a preference pair, not part of a pair format's set

    def summary(self) -> str:
        lines = [f"exported {self.rows} of {self.selected} rows to {self.out}"]
        if self.unpaired:
            lines.append(f"{self.unpaired} rows without a preference pair are not part of a {self.fmt} export")
        if self.problems:
            lines.append(f"{self.problems} rows break {self.fmt}'s rules: left out of the data file and listed, "
                         f"with the rule each breaks, in {self.out / PROBLEMS}")
        lines += [f"  {p}" for p in self.files]
        return "\n".join(lines)

    def counts(self) -> dict[str, int]:
        """What `.pond-export` and the config comments record: the set's rows, written and listed."""
        return {"n_rows": self.selected, "written": self.rows, "problems": self.problems}


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ExportError(f"{out}: exists and is not a pond export; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def export_run(run: Path, fmt: str, out: Path | None = None, rows: str | None = None,
               heldout: Path | None = None) -> ExportResult:
    if fmt not in FORMATS + PAIR_FORMATS:
        raise ExportError(f"--to: unknown export format {fmt!r} (known: {', '.join(FORMATS + PAIR_FORMATS)})")
    run = Path(run)
    rows = rows or ("heldout" if fmt == "lm-eval" else "curated")
    df, source = select_rows(run, rows, heldout)
    if df.is_empty() or "messages" not in df.columns:
        raise ExportError(f"{source}: no rows to export ({rows})")
    unpaired = df.height
    if fmt in PAIR_FORMATS:
        from pond.export.dpo import pair_rows

        df = pair_rows(df, source, rows)
    unpaired -= df.height
    out = Path(out) if out else layout.export_dir(run, fmt, rows)
    _prepare(out)
    name = dataset_name(run, rows)
    info = lineage(run, rows, source, df.height)
    result = ExportResult(out, selected=df.height, fmt=fmt, unpaired=unpaired)
    if fmt == "hf":
        from pond.export.hub import write_hf

        result.files, result.rows = write_hf(df, out, info, name), df.height
    elif fmt == "lm-eval":
        from pond.export.lm_eval import write_lm_eval

        result.files, result.rows, result.problems = write_lm_eval(df, out, name, info)
    elif fmt == "dpo":
        from pond.export.dpo import write_dpo

        result.files, result.rows, result.problems = write_dpo(df, out / DATA, out / PROBLEMS, name, info)
    else:
        assert fmt in CHAT_FORMATS
        data = out / DATA
        result.rows, result.problems = write_rows(df.select("id", "messages").iter_rows(), fmt, data, out / PROBLEMS)
        result.files = [data]
        info |= result.counts()  # the config comments say how many rows the data file holds
        if fmt == "axolotl":
            from pond.export.trainers import axolotl_config

            (out / "axolotl.yaml").write_text(axolotl_config(data, info), encoding="utf-8")
            result.files.append(out / "axolotl.yaml")
        elif fmt == "llama-factory":
            from pond.export.trainers import llama_factory_info

            (out / "dataset_info.json").write_text(llama_factory_info(data, name), encoding="utf-8")
            result.files.append(out / "dataset_info.json")
    if result.problems:
        result.files.append(out / PROBLEMS)
    (out / MARKER).write_text(json.dumps({k: info[k] for k in ("run", "recipe", "recipe_hash", "rows", "source_hash")}
                                         | result.counts() | {"format": fmt}) + "\n")
    return result
