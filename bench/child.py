"""The hidden worker protocol of the benches that measure each arm in a fresh Python process (its own
peak memory, its own cold start): the parent runs `python <bench> --child SPEC --data PATH --out PATH
[flags]` and reads the one `RESULT {json}` line the worker prints last on stdout."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


def add_worker_args(ap: argparse.ArgumentParser, *extra: str) -> None:
    """The worker's arguments (`--child`, `--data`, `--out` and `extra`), hidden from --help."""
    for name in ("--child", "--data", "--out", *extra):
        ap.add_argument(name, help=argparse.SUPPRESS)


def run_worker(script: str | Path, child: str, data: str | Path, out: str | Path, flags: list[str] = ()) -> dict:
    """Run `script` as a worker and return its result; exits with the worker's stderr tail if it printed none."""
    cmd = [sys.executable, str(script), "--child", child, "--data", str(data), "--out", str(out), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith(PREFIX)), None)
    if line is None:
        sys.exit(f"worker {child} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len(PREFIX):])


def report(result: dict) -> None:
    """The worker's side: print its result for the parent."""
    print(PREFIX + json.dumps(result), flush=True)
