"""Teacher client throughput against one vLLM server: pond's client next to a raw httpx loop.

For each concurrency (1, 8, 32) both clients send batches of the same shape (distinct prompts of
equal length, `ignore_eos` so every reply is exactly `--max-tokens` long) in ABBA order, to spread
the drift of a shared machine; figures are the median run, plus each client's own CPU time per
request (which does not depend on the server's noise). Then the last pond batch is sent again
from its cache, counting the requests that reach the server with vLLM's /metrics.
One JSON line per figure.

First (unless --no-dtype), the dtype check: pond's own `teacher serve` (dtype auto, the project's
one rule) against a vLLM started by hand with the other dtype, on the same 16 chat requests of
~730 prompt tokens sent at once; it prints the dtype each served in and its tokens/s.

    python bench/teacher.py [--url http://127.0.0.1:8000/v1 --model NAME] [--max-tokens 32]
                            [--fake-latency-ms 100] [--no-dtype] [--no-client]

Without --url it starts its own server (synthesis.server.serve) and stops it at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthesis.cache import ResponseCache  # noqa: E402
from synthesis.client import ChatRequest, TeacherConfig, TeacherSession  # noqa: E402




def chat_requests_served(base_url: str) -> float:
    root = base_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line)


def batch(tag: str, count: int, max_tokens: int) -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"[{tag}-{i:04d}] Write a short note about the sea."}],
                        max_tokens=max_tokens, temperature=0.0, seed=i, extra={"ignore_eos": True})
            for i in range(count)]


async def raw_loop(config: TeacherConfig, reqs: list[ChatRequest]) -> int:
    """The baseline: a bare semaphore-bounded httpx loop, no retries, no cache, no accounting."""
    sem = asyncio.Semaphore(config.max_concurrency)
    n = config.max_concurrency
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout_s, limits=limits) as http:
        async def one(r: ChatRequest) -> int:
            async with sem:
                body = {"model": config.model, "messages": r.messages, **r.params()}
                resp = await http.post("/chat/completions", json=body)
                resp.raise_for_status()
                return resp.json()["usage"]["completion_tokens"]

        return sum(await asyncio.gather(*(one(r) for r in reqs)))


def timed_raw(config: TeacherConfig, reqs: list[ChatRequest]) -> tuple[float, int, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    tokens = asyncio.run(raw_loop(config, reqs))
    return time.perf_counter() - t0, tokens, time.process_time() - c0


def timed_pond(config: TeacherConfig, reqs: list[ChatRequest], cache_path: Path) -> tuple[float, int, float, dict]:
    with ResponseCache(cache_path) as cache:
        session = TeacherSession(config, cache)
        t0, c0 = time.perf_counter(), time.process_time()
        results = session.run(reqs)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise SystemExit(f"pond client failed {len(failed)} calls: {failed[0]}")
    return dt, sum(r.completion_tokens for r in results), cpu, dict(session.stats)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(cfg0: TeacherConfig, args: argparse.Namespace, workdir: Path, server: str, scale: int = 1):
    """pond vs raw at each concurrency; returns the last pond batch (config, requests, cache path)."""
    timed_raw(cfg0, batch(f"warm-{server}", 4, 8))  # first requests compile/warm the server
    last = None
    for c in args.concurrency:
        config = cfg0.model_copy(update={"max_concurrency": c})
        count = max(8, args.requests_per_slot * c) * scale
        runs: dict[str, list[tuple[float, int, float]]] = {"raw": [], "pond": []}
        pair_ratios: list[float] = []  # neighbours in time see the same load
        for k, kind in enumerate(["raw", "pond", "pond", "raw"] * args.rounds):  # ABBA
            reqs = batch(f"{server}-c{c}-{k}", count, args.max_tokens)
            if kind == "raw":
                runs["raw"].append(timed_raw(config, reqs))
            else:
                path = workdir / f"{server}-c{c}-{k}.sqlite"
                dt, tok, cpu, _ = timed_pond(config, reqs, path)
                runs["pond"].append((dt, tok, cpu))
                last = (config, reqs, path)
            if k % 2 == 1:
                pair_ratios.append(runs["raw"][-1][0] / runs["pond"][-1][0])
        out = {}
        for kind, rs in runs.items():
            # median over runs: one slow run (another process grabbing the CPU) does not decide
            rps = statistics.median(count / r[0] for r in rs)
            tps = statistics.median(r[1] / r[0] for r in rs)
            out[kind] = {"req_per_s": round(rps, 3), "completion_tok_per_s": round(tps, 1)}
            emit(figure=f"{kind}_throughput", server=server, concurrency=c, runs=len(rs), requests_per_run=count,
                 max_tokens=args.max_tokens, seconds_per_run=[round(r[0], 2) for r in rs], **out[kind],
                 client_cpu_ms_per_request=round(1000 * sum(r[2] for r in rs) / (len(rs) * count), 3))
        emit(figure="pond_vs_raw", server=server, concurrency=c,
             req_ratio=round(out["pond"]["req_per_s"] / out["raw"]["req_per_s"], 3),
             tok_ratio=round(out["pond"]["completion_tok_per_s"] / out["raw"]["completion_tok_per_s"], 3),
             adjacent_pair_ratio_median=round(statistics.median(pair_ratios), 3))
    return last


def long_prompts(count: int = 16) -> list[ChatRequest]:
    """The requests behind the dtype rule (curation.settings): ~730 prompt tokens each, seeded, short answers."""
    filler = " ".join(f"word{i}" for i in range(200))
    return [ChatRequest([{"role": "user", "content": f"{i}: {filler}\nSummarise this in one sentence."}],
                        max_tokens=32, temperature=0.0, seed=i, extra={"ignore_eos": True}) for i in range(count)]


def timed_burst(base_url: str, model: str) -> dict:
    reqs = long_prompts()
    config = TeacherConfig(base_url=base_url, model=model, max_concurrency=len(reqs), max_retries=0, timeout_s=3600)
    TeacherSession(config.model_copy(update={"max_concurrency": 1})).run(long_prompts(1))  # warm
    t0 = time.perf_counter()
    results = TeacherSession(config).run(reqs)
    dt = time.perf_counter() - t0
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise SystemExit(f"{len(failed)} of the dtype-check requests failed: {failed[0]}")
    prompt, completion = sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
    return {"seconds": round(dt, 2), "requests": len(reqs), "prompt_tokens": prompt, "completion_tokens": completion,
            "tokens_per_s": round((prompt + completion) / dt, 1), "completion_tokens_per_s": round(completion / dt, 2)}


def dtype_check() -> None:
    """pond's `teacher serve` (dtype auto) vs vLLM started by hand with the other dtype."""
    from synthesis import server

    handle = server.serve(port=free_port(), log_dir=tempfile.mkdtemp(prefix="pond-bench-"))
    try:
        ours = timed_burst(handle.base_url, handle.model)
    finally:
        handle.stop()
    other = "float32" if handle.dtype == "bfloat16" else "bfloat16"
    python, cpu = server.teacher_python()
    port = free_port()
    cmd = server.server_command(python, server.resolve_model(None), port, handle.model, cpu=cpu,
                                dtype={v: k for k, v in server.VLLM_DTYPE.items()}[other])
    log = Path(tempfile.mkdtemp(prefix="pond-bench-")) / "vllm.log"
    with open(log, "wb") as logf:  # the same command a user would type, with --dtype the other way
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=server.server_env(cpu),
                                start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 900
        while not server.is_healthy(base_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"hand-started vLLM ({other}) did not start; see {log}")
            time.sleep(0.5)
        theirs = timed_burst(base_url, handle.model)
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    emit(figure="teacher_serve_tokens_per_s", value=ours["tokens_per_s"], dtype=handle.dtype, **ours,
         server="pond teacher serve (dtype auto)")
    emit(figure="hand_started_vllm_tokens_per_s", value=theirs["tokens_per_s"], dtype=other, **theirs,
         server=f"vllm api_server --dtype {other}")
    emit(figure="teacher_serve_speed_vs_other_dtype", value=round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3),
         served_dtype=handle.dtype, other_dtype=other, dtype=handle.dtype)


FAKE_SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fixtures_teacher import FakeTeacher
FakeTeacher(port={port}, rule=lambda body: "sleep:{latency}").start()
print("ready", flush=True)
time.sleep(3600)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="base URL of a running server (default: start one)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-slot", type=int, default=2, help="batch size = max(8, this x concurrency)")
    ap.add_argument("--rounds", type=int, default=3, help="ABBA rounds per concurrency (each: 2 raw + 2 pond)")
    ap.add_argument("--fake-latency-ms", type=float, default=0,
                    help="also compare against a fake server (another process) answering after this fixed "
                         "delay: isolates the client's overhead from the noise of a busy model server")
    ap.add_argument("--no-dtype", action="store_true", help="skip the served-dtype check")
    ap.add_argument("--no-client", action="store_true", help="only the served-dtype check")
    args = ap.parse_args(argv)

    if not args.no_dtype and args.url is None:
        dtype_check()
    if args.no_client:
        return 0
    handle = None
    if args.url is None:
        from synthesis.server import serve

        handle = serve(port=free_port(), log_dir=tempfile.mkdtemp(prefix="pond-bench-"))
        args.url, args.model = handle.base_url, handle.model
    workdir = Path(tempfile.mkdtemp(prefix="pond-bench-cache-"))
    try:
        config, reqs, path = compare(TeacherConfig(base_url=args.url, model=args.model), args, workdir, "vllm")
        before = chat_requests_served(args.url)
        dt, _, _, stats = timed_pond(config, reqs, path)
        emit(figure="cached_rerun", server="vllm", calls=len(reqs), seconds=round(dt, 4),
             requests_reaching_server=chat_requests_served(args.url) - before,
             cache_hits=stats.get("cache_hits", 0), sent=stats.get("sent", 0))
    finally:
        if handle is not None:
            handle.stop()
    if args.fake_latency_ms > 0:
        port = free_port()
        code = FAKE_SERVER.format(root=str(Path(__file__).resolve().parents[1]), port=port,
                                  latency=args.fake_latency_ms / 1000)
        fake = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            fake.stdout.readline()  # "ready"
            # 10x the requests: each run is short against a fixed-latency server
            compare(TeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", model="fake"), args, workdir,
                    f"fake-{args.fake_latency_ms:g}ms", scale=10)
        finally:
            fake.terminate()
            fake.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
