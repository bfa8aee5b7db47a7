"""kill -9 inside training, at points chosen by step rather than by time: inside a checkpoint save
(after the adapter, before the optimizer; after the optimizer, before the RNG states and trainer
state), between a save and its seal, in the middle of a step, and while train-result.json is being
written. After each kill the same training is started again; the last start finishes, and its
adapter equals an uninterrupted run's within the resume tolerance (rtol 1e-5, atol 1e-6)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training import _config, _rows
from training.checkpoints import SET_ASIDE
from training.trainer import train

ROOT = Path(__file__).resolve().parents[1]

# Runs train() in a fresh process; POND_TEST_KILL=<where>:<step> makes the process SIGKILL itself there.
DRIVER = r"""
import os, signal, sys
import polars as pl
from pathlib import Path
from transformers import Trainer
import training.checkpoints as checkpoints
import training.trainer as trainer_module
from training.config import TrainConfig

where, _, at = os.environ.get("POND_TEST_KILL", "").partition(":")
at = int(at or -1)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def kill_in(cls, name, before=True):
    original = getattr(cls, name)
    def wrapped(self, *args, **kwargs):
        if self_step(self, args) == at and before:
            die()
        return original(self, *args, **kwargs)
    setattr(cls, name, wrapped)

def self_step(obj, args):
    state = getattr(obj, "state", None)
    if state is None:  # a callback: (args, state, control)
        state = args[1]
    return state.global_step

if where == "optimizer":  # the adapter of this checkpoint is written, nothing else
    kill_in(Trainer, "_save_optimizer_and_scheduler")
elif where == "rng":  # adapter and optimizer written; RNG states and trainer_state.json not
    kill_in(Trainer, "_save_rng_state")
elif where == "seal":  # every file written, the seal not
    kill_in(checkpoints.CheckpointSealed, "on_save")
elif where == "step":  # in the middle of the step after `at`
    kill_in(Trainer, "training_step")
elif where == "result":  # train-result.json's temporary file written (curation.store), not yet renamed
    replace = os.replace
    def replace_or_die(src, dst):
        if Path(dst).name == "train-result.json":
            die()
        replace(src, dst)
    os.replace = replace_or_die

rows = pl.read_parquet(sys.argv[1])
config = TrainConfig.model_validate_json(Path(sys.argv[2]).read_text())
trainer_module.train(rows, config, Path(sys.argv[3]), seed=3)
print("finished")
"""


def _start(rows: Path, config: Path, out: Path, kill: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "POND_TEST_KILL"} | {"PYTHONPATH": str(ROOT)}
    if kill:
        env["POND_TEST_KILL"] = kill
    return subprocess.run([sys.executable, "-c", DRIVER, str(rows), str(config), str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_killed_anywhere_in_training_resumes_to_the_uninterrupted_adapter(tiny_llama_dir, tmp_path):
    data = _rows(48)
    cfg = _config(tiny_llama_dir, max_steps=6, save_steps=1, save_total_limit=2, warmup_ratio=0.2)
    whole = train(data, cfg, tmp_path / "whole", seed=3)
    rows, config = tmp_path / "rows.parquet", tmp_path / "config.json"
    data.write_parquet(rows)
    config.write_text(cfg.model_dump_json())
    out = tmp_path / "killed"
    for kill in ("optimizer:1", "rng:3", "seal:4", "step:4", "rng:5", "result:6"):
        done = _start(rows, config, out, kill)
        assert done.returncode == -signal.SIGKILL, (kill, done.stderr[-3000:])
        if kill == "optimizer:1":  # the only checkpoint is half written: it must not be resumed from
            assert not (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
        if kill == "result:6":  # its temporary file is whole, the rename never came: not finished
            assert not (out / "train-result.json").exists() and list(out.glob(".train-result.json.*.tmp"))
    last = _start(rows, config, out, None)
    assert last.returncode == 0 and "finished" in last.stdout, last.stderr[-3000:]
    aside = sorted(p.name for p in (out / SET_ASIDE).iterdir())
    assert "checkpoint-5" in aside  # the one cut inside its save, set aside rather than resumed
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    result = json.loads((out / "train-result.json").read_text())["result"]
    assert result["losses"] == pytest.approx(whole.losses, rel=1e-5)
    assert result["steps"] == whole.steps == 6


def test_an_unsealed_checkpoint_is_set_aside_with_one_log_line(tmp_path, caplog):
    from training.checkpoints import SEAL, last_sealed

    ckpts = tmp_path / "checkpoints"
    for step, sealed in ((2, True), (4, True), (6, False)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        if sealed:
            (ckpts / f"checkpoint-{step}" / SEAL).write_text(json.dumps({"step": step}))
    (ckpts / "checkpoint-4" / SEAL).write_text('{"step": 4')  # the seal itself cut short: not sealed
    with caplog.at_level("WARNING"):
        assert last_sealed(ckpts) == ckpts / "checkpoint-2"
    assert sorted(p.name for p in (tmp_path / SET_ASIDE).iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert sum("set aside" in r.message for r in caplog.records) == 2
    assert last_sealed(tmp_path / "none") is None
