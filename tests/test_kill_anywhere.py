"""kill -9 anywhere: `pond run` killed with SIGKILL in every phase, rerun each time, ends where an
uninterrupted run ends (issue 14).

The scaled quickstart (real ShareGPT rows, every curation step, edge cases written and judged by the
real vLLM teacher, QLoRA training of the tiny Llama, held-out evaluation) runs once uninterrupted.
Then the same recipe, in the same run folder path, is started again and killed: during ingest, a
curation step, the teacher step, training (after a checkpoint) and evaluation, each at a random
moment inside that phase; after each kill it is rerun, and the last rerun finishes. Then:
- curated.parquet and eval.json are byte-identical to the uninterrupted run's;
- a kill inside a checkpoint save (save_steps 1, killed while a checkpoint folder has no seal yet)
  leaves a folder the rerun sets aside rather than resumes from (training.checkpoints);
- the adapter's tensors are equal within the documented resume tolerance (rtol 1e-5, atol 1e-6;
  README, "Re-running the same command resumes"), its config byte-identical;
- no teacher request whose answer pond had received is sent again: the server saw exactly the
  uninterrupted run's requests plus the ones in flight at the kill (answers pond never got), less
  the judge's (its replies are in the cache every run shares, so the same path's rerun finds them).
The teacher runs at concurrency 1, so every request is computed alone and its answer does not
depend on what else the server was batching.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests import limits
from tests.test_e2e import scaled_quickstart

pytestmark = [pytest.mark.slow, pytest.mark.teacher]
POLL_S = 0.002
# how long after a phase is seen to begin the kill may come: well inside that phase's length here
WINDOW_S = {"ingest": 0.05, "curation: embed_quality": 1.0, "teacher: synthesize": 0.5,
            "training: inside a checkpoint save": 0.0, "training": 0.05, "evaluation": 0.5}


def _recipe(tmp_path: Path, teacher, student: Path) -> Path:
    recipe = yaml.safe_load(scaled_quickstart(tmp_path, teacher.base_url, teacher.model, student))
    # malformed lines lengthen ingest (each one is a rejection with its line number) without
    # changing what curation sees, so the kill lands inside ingest
    with open(tmp_path / "raw.jsonl", "a") as f:
        f.writelines('{"messages": [ broken line %d\n' % i for i in range(30000))
    for teacher_cfg in recipe["teachers"].values():
        teacher_cfg["max_concurrency"] = 1
    recipe["train"].update(max_steps=6, save_steps=1)  # a save every step: a kill can land inside one
    recipe.pop("experiment", None)
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _pond_run(recipe: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pond.cli", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _ledger(out: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _cached_answers(out: Path) -> int:
    path = out / "teacher-cache.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05) as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.Error:
        return 0


def _started(out: Path, kind: str) -> bool:
    events = _ledger(out)
    return any(e["event"] == "start" and e.get("step", "").endswith(kind) for e in events) and not any(
        e["event"] == "done" and e.get("step", "").endswith(kind) for e in events)


def _unsealed_checkpoint(out: Path) -> bool:
    from training.checkpoints import SEAL

    return any(not (p / SEAL).exists() for p in (out / "checkpoints").glob("checkpoint-*"))


# (phase, "we are inside it now", "it is over": the kill missed)
PHASES = [
    ("ingest", lambda o: (o / "steps" / "00-ingest").is_dir() and not (o / "steps" / "00-ingest" / "DONE").exists(),
     lambda o: (o / "steps" / "00-ingest" / "DONE").exists()),
    ("curation: embed_quality", lambda o: _started(o, "embed_quality"),
     lambda o: any(e["event"] == "done" and e["step"].endswith("embed_quality") for e in _ledger(o))),
    ("teacher: synthesize", lambda o: _started(o, "synthesize") and _cached_answers(o) >= 1,
     lambda o: any(e["event"] == "done" and e["step"].endswith("synthesize") for e in _ledger(o))),
    # a checkpoint folder the Trainer is still writing (not sealed yet): the kill lands inside the save
    ("training: inside a checkpoint save", lambda o: _unsealed_checkpoint(o) and not (o / "adapter").exists(),
     lambda o: (o / "adapter").exists()),
    ("training", lambda o: (o / "checkpoints" / "checkpoint-4").is_dir() and not (o / "adapter").exists(),
     lambda o: (o / "adapter").exists()),
    ("evaluation", lambda o: any(e["event"] == "evaluate" for e in _ledger(o)) and not (o / "eval.json").exists(),
     lambda o: (o / "eval.json").exists()),
]


def _kill_inside(recipe: Path, out: Path, inside, over, delay_s: float) -> str:
    """Start `pond run`, wait until it is inside the phase, wait `delay_s` more, SIGKILL it."""
    proc = _pond_run(recipe, out)
    deadline = time.monotonic() + limits.REAL_WAIT_S
    while not inside(out):
        if proc.poll() is not None or time.monotonic() > deadline:
            out_text = proc.stdout.read() if proc.poll() is not None else ""
            proc.kill()
            pytest.fail(f"pond run ended (or stalled) before the phase began:\n{out_text[-3000:]}")
        time.sleep(POLL_S)
    time.sleep(delay_s)
    missed = over(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return "after the phase" if missed else "inside"


def _finish(recipe: Path, out: Path) -> None:
    proc = _pond_run(recipe, out)
    text, _ = proc.communicate(timeout=limits.REAL_WAIT_S)
    assert proc.returncode == 0, text[-3000:]


def test_sigkill_in_every_phase_then_rerun_gives_the_uninterrupted_result(tmp_path, teacher_server, tiny_llama_dir):
    import torch
    from safetensors.torch import load_file

    recipe = _recipe(tmp_path, teacher_server, tiny_llama_dir)
    out, ref = tmp_path / "run", tmp_path / "reference"
    m0 = teacher_server.metrics()["http_chat_requests"]
    _finish(recipe, out)
    uninterrupted_requests = teacher_server.metrics()["http_chat_requests"] - m0
    assert uninterrupted_requests > 0
    out.rename(ref)  # the interrupted run uses the same path, so paths inside eval.json match

    rng = random.Random(14)
    landed, lost = {}, 0
    m1 = teacher_server.metrics()["http_chat_requests"]
    for name, inside, over in PHASES:
        before_sent = teacher_server.metrics()["http_chat_requests"]
        before_cached = _cached_answers(out)
        landed[name] = _kill_inside(recipe, out, inside, over, rng.uniform(0, WINDOW_S[name]))
        # requests the server took in this attempt whose answers never reached the cache
        lost += (teacher_server.metrics()["http_chat_requests"] - before_sent) - (_cached_answers(out) - before_cached)
    assert all(v == "inside" for v in landed.values()), landed
    _finish(recipe, out)
    interrupted_requests = teacher_server.metrics()["http_chat_requests"] - m1

    assert (out / "curated.parquet").read_bytes() == (ref / "curated.parquet").read_bytes()
    assert (out / "eval.json").read_bytes() == (ref / "eval.json").read_bytes()
    assert (out / "adapter" / "adapter_config.json").read_bytes() == (ref / "adapter" / "adapter_config.json").read_bytes()
    a = load_file(ref / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # at concurrency 1 at most one request is in flight when the teacher step is killed
    assert 0 <= lost <= 1
    # the judge's replies are in the cache every run shares, so the reruns sent none of them again
    [judge_dir] = (ref / "steps").glob("*-judge")
    judged = json.loads((judge_dir / "stats.json").read_text())["teacher"].get("sent", 0)
    expected = uninterrupted_requests - judged + lost
    assert interrupted_requests == expected, (interrupted_requests, uninterrupted_requests, judged, lost)
    assert len(pl.read_parquet(out / "curated.parquet")) > 0
    shutil.rmtree(ref)
