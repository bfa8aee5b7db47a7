"""Checkpoints a rerun can trust.

The Trainer writes a checkpoint file by file (adapter, optimizer, scheduler, RNG states, trainer
state), so a kill during the save leaves a folder that looks like a checkpoint and is not one.
`CheckpointSealed` writes a seal into the folder once the Trainer is done with it (its `on_save`
comes after every file of the checkpoint, and after the rotation of older ones); on resume,
`last_sealed` returns the newest sealed checkpoint and sets the unsealed ones aside, so training
goes on from the one before, or from the start, and ends where an uninterrupted run ends.

With several processes every rank writes its own RNG state into the checkpoint; rank 0 seals it once
all ranks have passed a barrier after their writes, so a seal still vouches for every file.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from curation.store import write_text
from training.distributed import is_main, wait_for_everyone

log = logging.getLogger(__name__)
SEAL = "pond-checkpoint.json"
SET_ASIDE = "checkpoints-incomplete"  # beside checkpoints/, so neither resume nor rotation sees them
_NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointSealed(TrainerCallback):
    """Seals each checkpoint folder after the Trainer has written all of it."""

    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()  # every rank's files are written
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_main() and folder.is_dir():
            write_text(json.dumps({"step": state.global_step}), folder / SEAL)
        return control


def last_sealed(checkpoints: Path) -> Path | None:
    """The newest sealed checkpoint under `checkpoints/`; newer unsealed ones are moved aside, with a log line."""
    if not checkpoints.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in checkpoints.iterdir()
                    if p.is_dir() and (m := _NAME.fullmatch(p.name))), reverse=True)
    for _, folder in found:
        if _sealed(folder):
            return folder
        aside = checkpoints.parent / SET_ASIDE / folder.name
        shutil.rmtree(aside, ignore_errors=True)
        aside.parent.mkdir(exist_ok=True)
        folder.rename(aside)
        log.warning("%s was cut off while it was being written (no seal): set aside in %s; resuming from the "
                    "checkpoint before it, or from the start", folder, aside.parent)
    return None


def _sealed(folder: Path) -> bool:
    try:
        return json.loads((folder / SEAL).read_text()).get("step") == int(folder.name.rsplit("-", 1)[1])
    except (OSError, ValueError, AttributeError):
        return False
