"""kill -9 inside training, at points chosen by step rather than by time: inside a checkpoint save
(after the adapter, before the optimizer; after the optimizer, before the RNG states and trainer
state), between a save and its seal, in the middle of a step, and while train-result.json is being
written. After each kill the same training is started again; the last start finishes, and its
adapter equals an uninterrupted run's within the resume tolerance (rtol 1e-5, atol 1e-6).

The same with two processes (DDP, gloo): one rank dies and the others are stopped, or the process
that started the workers dies and the workers die with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training import _config, _rows
from training.checkpoints import SEAL, SET_ASIDE
from training.trainer import train

ROOT = Path(__file__).resolve().parents[1]

# Runs train() in a fresh process; POND_TEST_KILL=<where>:<step>[:<rank>] makes the process SIGKILL itself
# there (with several processes: only that rank, or every rank). A file, not `python -c`: the workers
# train() starts import it again (spawn), which puts the same kill points in them.
DRIVER = r"""
import multiprocessing, os, signal, sys
import polars as pl
from pathlib import Path
from transformers import Trainer
import training.checkpoints as checkpoints
import training.trainer as trainer_module
from training.config import TrainConfig

where, at, rank = (os.environ.get("POND_TEST_KILL", "") + "::").split(":")[:3]
at = int(at or -1)


def die():
    if rank in ("", os.environ.get("RANK", "0")):
        Path(sys.argv[3] + ".died").write_text(os.environ.get("RANK", "-"))  # which process reached the kill point
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


def progress(steps, description, total):
    for step in steps:
        if where == "parent" and step == at:  # the process that started the workers, while they train
            workers = [str(p.pid) for p in multiprocessing.active_children()]
            Path(sys.argv[3] + ".workers").write_text(" ".join(workers))
            die()
        yield step


if __name__ == "__main__":
    rows = pl.read_parquet(sys.argv[1])
    config = TrainConfig.model_validate_json(Path(sys.argv[2]).read_text())
    trainer_module.train(rows, config, Path(sys.argv[3]), seed=3, progress=progress)
    print("finished")
"""


def _start(rows: Path, config: Path, out: Path, kill: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "POND_TEST_KILL"} | {"PYTHONPATH": str(ROOT)}
    if kill:
        env["POND_TEST_KILL"] = kill
    driver = out.parent / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), str(rows), str(config), str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # ~50 s: a kill at every point; make test keeps one kill and resume (test_training.py)
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
    _assert_same_training(whole.adapter_dir.parent, out)


def _assert_same_training(whole: Path, resumed: Path) -> None:
    """The resumed run's adapter and loss curve are the uninterrupted run's, within the resume tolerance."""
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    expected, result = (json.loads((d / "train-result.json").read_text())["result"] for d in (whole, resumed))
    assert result["losses"] == pytest.approx(expected["losses"], rel=1e-5)
    assert result["steps"] == expected["steps"] == 6


@pytest.mark.slow  # seven starts of a parent and two workers: 4.5 to 7 minutes on 2 shared cores
def test_ddp_killed_anywhere_resumes_to_the_uninterrupted_adapter(tiny_llama_dir, tmp_path):
    cfg = _config(tiny_llama_dir, max_steps=6, save_steps=1, save_total_limit=2, warmup_ratio=0.2)
    rows, config = tmp_path / "rows.parquet", tmp_path / "config.json"
    _rows(48).write_parquet(rows)
    config.write_text(json.dumps(cfg.model_dump(mode="json") | {"processes": 2}))
    whole = _start(rows, config, tmp_path / "whole", None)
    assert whole.returncode == 0 and "finished" in whole.stdout, whole.stderr[-3000:]
    out = tmp_path / "killed"
    # rank 1 before its RNG state (rank 0's files may all be written), rank 0 before the seal, rank 1
    # inside a step, the parent while the workers train, rank 0 inside train-result.json's write
    died = Path(str(out) + ".died")
    for kill, rank in (("rng:2:1", "1"), ("seal:3:0", "0"), ("step:3:1", "1"), ("parent:4", "-"), ("result:6", "0")):
        done = _start(rows, config, out, kill)
        assert done.returncode != 0 and "finished" not in done.stdout, (kill, done.stderr[-3000:])
        assert died.read_text() == rank, (kill, done.stderr[-3000:])  # killed there, not failed elsewhere
        died.unlink()
        if kill == "rng:2:1":
            assert not (out / "checkpoints" / "checkpoint-2" / SEAL).exists()
        if kill == "parent:4":
            _assert_gone(Path(str(out) + ".workers").read_text().split())
    last = _start(rows, config, out, None)
    assert last.returncode == 0 and "finished" in last.stdout, last.stderr[-3000:]
    aside = sorted(p.name for p in (out / SET_ASIDE).iterdir())
    assert {"checkpoint-2", "checkpoint-3"} <= set(aside)  # the two cut before their seal
    _assert_same_training(tmp_path / "whole", out)


def _assert_gone(pids: list[str], wait_s: float = 10.0) -> None:
    """Each process has exited (gone, or a zombie nobody reaped yet) within `wait_s`."""
    deadline = time.monotonic() + wait_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    assert pids and not alive, f"workers {alive} outlived the process that started them"


def _running(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
