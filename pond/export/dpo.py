"""`--to dpo`: a run's preference pairs (the `preference_pairs` step, docs/preference-pairs.md) for DPO trainers.

- `data.jsonl`: TRL's conversational preference format with an explicit prompt, `{"id", "prompt", "chosen",
  "rejected"}`, each a list of `{role, content}` (`messages` left out: TRL refuses an example that has it
  beside the three). `DPOTrainer(train_dataset=load_dataset("json", data_files=...)["train"])` reads it.
- `sharegpt.jsonl`: the same pairs as LLaMA-Factory documents ShareGPT preference data (data/README.md:
  the prompt's `conversations` in from/value turns, `chosen` and `rejected` one gpt turn each), a layout
  Axolotl's DPO `chat_template.default` reads too (a `chosen` object, the keys mapped).
- `axolotl.yaml`, `dataset_info.json`: each trainer's stanza for `sharegpt.jsonl` (pond/export/trainers.py).

Only rows with a pair are the set; a row set without any is one line naming the step that makes them.
Both data files hold the same pairs: one rule set (chat.PAIR_RULES, what all three readers accept), one
problems.jsonl.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from pond.export.chat import PAIR_RULES, Messages, sharegpt_pair_record, trl_pair_record, write_checked
from pond.export.rows import ExportError
from pond.export.trainers import axolotl_dpo_config, llama_factory_info

PAIRS = "sharegpt.jsonl"
AXOLOTL = "axolotl.yaml"
LLAMA_FACTORY = "dataset_info.json"


def pair_rows(df: pl.DataFrame, source: Path, rows: str) -> pl.DataFrame:
    """The rows that carry a pair (non-null `chosen`); one line when there is none."""
    if "chosen" not in df.columns or not df["chosen"].is_not_null().any():
        raise ExportError(f"{source}: none of the {df.height} rows ({rows}) has a preference pair (`chosen`): add a "
                          f"`preference_pairs` step to the recipe to make them (docs/preference-pairs.md)")
    return df.filter(pl.col("chosen").is_not_null())


def _pairs(df: pl.DataFrame) -> Iterator[tuple[str, Messages]]:
    """(id, the pair as one list: the prompt's turns, then the chosen and the rejected answer)."""
    for row_id, prompt, chosen, rejected in df.select("id", "prompt", "chosen", "rejected").iter_rows():
        yield row_id, [*(prompt or []), *(chosen or []), *(rejected or [])]


def write_dpo(df: pl.DataFrame, data: Path, problems: Path, name: str,
              info: dict[str, Any]) -> tuple[list[Path], int, int]:
    """Both data files and both stanzas into data's folder. Returns (files, pairs written, pairs listed)."""
    out = data.parent
    written, listed = write_checked(_pairs(df), PAIR_RULES, trl_pair_record, data, problems)
    write_checked(_pairs(df), PAIR_RULES, sharegpt_pair_record, out / PAIRS, problems)  # the same rows listed
    info = info | {"written": written, "problems": listed}  # the stanza's comment lines say how many it holds
    (out / AXOLOTL).write_text(axolotl_dpo_config(out / PAIRS, info), encoding="utf-8")
    (out / LLAMA_FACTORY).write_text(llama_factory_info(out / PAIRS, name, ranking=True), encoding="utf-8")
    return [data, out / PAIRS, out / AXOLOTL, out / LLAMA_FACTORY], written, listed
