"""`make demo` as a new user runs it: a fresh clone, an empty `$POND_CACHE_DIR`, the whole command timed, stage by
stage, then the rerun (#28).

    python bench/demo.py                 # three fresh clones in a row, each followed by its rerun
    python bench/demo.py --runs 1        # one
    python bench/demo.py --no-rerun --keep

Each run clones this checkout's HEAD into a new folder and runs `make demo` there with a new, empty
`POND_CACHE_DIR` and uv cache (pip's own download cache is left as it is: it holds almost nothing here, where
packages come from local folders and PyPI). Every output line is stamped with the seconds since the start and
written to the log as it comes, so the set-up stages are timed from the commands make echoes (the project venv,
then models and data, the judge model and the vLLM venv side by side, each timed to its end) and pond's own stages
from its `── <stage>: done in N s` lines. Then `make demo` again in the same clone: the rerun, which should reuse
everything. One JSON line per run and one per rerun (wall and children's CPU seconds, the stages, the exit status),
each naming the CPU; the clone and its cache are deleted after (`--keep` keeps them). The goal of issue 28 is at
most 15 minutes a fresh run and 2 minutes a rerun on the AVX2-only EPYC.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

ROOT = Path(__file__).resolve().parents[1]
# a set-up stage starts at the first line make echoes for it; they run in this order (Makefile's `demo:`)
SETUP_MARKERS = (("project venv", "-m venv"), ("models, judge model and vLLM venv", "-j3 -O models judge-model teacher"),
                 ("pond run", "/pond run "))
# the three side by side: make -O prints each one's lines when it ends, so their first line marks its end
SIDE_BY_SIDE = (("models and data", "scripts/prepare_models.py\n"), ("judge model", "prepare_models.py --judge"),
                ("vLLM venv", "ensure_teacher_venv"))
POND_STAGE = re.compile(r"^── (?P<stage>.+): done in (?P<seconds>[\d.]+) s")
# pond's stage lines against the estimate's stages (curation and synthesis hold the teacher's requests)
DEMO_RUN = Path("runs/quickstart")  # the Makefile's `demo:` runs the quickstart there
MEASURED_AS = {"curation and synthesis": ("curation", "teacher"), "training": ("training",),
               "evaluation": ("evaluation",), "experiment": ("experiment",)}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_make(clone: Path, env: dict, log: Path) -> dict:
    """`make demo` in `clone`: wall and CPU seconds, exit status, and (seconds since start, line) for every line."""
    lines: list[tuple[float, str]] = []
    cpu0, t0 = children_cpu(), time.perf_counter()
    with subprocess.Popen(["make", "demo"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace") as proc, open(log, "w", buffering=1) as out:
        for line in proc.stdout:
            stamp = time.perf_counter() - t0
            lines.append((stamp, line))
            out.write(f"{stamp:8.1f} {line}")
        rc = proc.wait()
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(children_cpu() - cpu0, 1), "returncode": rc,
            "lines": lines}


def stages(lines: list[tuple[float, str]], wall: float) -> dict[str, float]:
    """Seconds per set-up stage (from its first echoed command to the next stage's) and per pond stage."""
    starts = []
    for name, marker in SETUP_MARKERS:
        found = next((t for t, line in lines if marker in line), None)
        if found is not None:
            starts.append((found, name))
    starts.sort()
    out = {name: round(end - start, 1) for (start, name), (end, _) in zip(starts, starts[1:] + [(wall, "")])}
    if starts and starts[0][0] > 0.5:  # before the first marker: nothing to build (a rerun)
        out["before set-up"] = round(starts[0][0], 1)
    side = next((t for t, name in starts if name == SETUP_MARKERS[1][0]), None)
    for name, marker in SIDE_BY_SIDE:
        end = next((t for t, line in lines if marker in line), None)
        if side is not None and end is not None:
            out[f"{name} (ended after, side by side)"] = round(end - side, 1)
    for _, line in lines:
        if m := POND_STAGE.match(line.strip()):
            out[f"pond: {m['stage']}"] = float(m["seconds"])
    return out


def estimate_against_measured(run: Path, measured: dict[str, float]) -> dict | None:
    """The plan's estimate of each pond stage ([shortest, longest] seconds, kept in the run's manifest.json by
    `pond run`) beside its measured time."""
    manifest = run / "manifest.json"
    estimated = json.loads(manifest.read_text()).get("plan", {}).get("seconds") if manifest.is_file() else None
    if not estimated:
        return None
    out = {}
    for stage, parts in MEASURED_AS.items():
        if f"pond: {stage}" in measured:
            low, high = (round(sum(estimated.get(p, [0, 0])[i] for p in parts), 1) for i in (0, 1))
            out[stage] = {"estimated_s": [low, high], "measured_s": measured[f"pond: {stage}"]}
    return out


def one_run(k: int, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"pond-demo-{k}-", dir=args.workdir))
    clone, cache = work / "pond", work / "cache"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    # uv's download cache empty too, as on a new machine (pip's holds nothing here: its packages come from local
    # folders and PyPI)
    env = {**os.environ, "POND_CACHE_DIR": str(cache), "UV_CACHE_DIR": str(work / "uv-cache")}
    env.pop("VIRTUAL_ENV", None)
    try:
        for label in ("fresh", "rerun")[: 1 if args.no_rerun else 2]:
            r = timed_make(clone, env, work / f"{label}.log")
            measured = stages(r["lines"], r["wall_s"])
            emit(figure="make_demo_seconds", run=k, kind=label, commit=head.strip(), wall_s=r["wall_s"],
                 cpu_s=r["cpu_s"], minutes=round(r["wall_s"] / 60, 2), returncode=r["returncode"],
                 stages=measured, goal_minutes=15 if label == "fresh" else 2,
                 log=str(work / f"{label}.log") if args.keep else None, load_after=round(os.getloadavg()[0], 2))
            if label == "fresh" and (against := estimate_against_measured(clone / DEMO_RUN, measured)):
                # the plan line's estimate (pond.costs) beside what each pond stage took: how far a user can trust it
                emit(figure="demo_estimate_against_measured", run=k, commit=head.strip(), stages=against,
                     total={"estimated_s": [round(sum(v["estimated_s"][i] for v in against.values()), 1)
                                            for i in (0, 1)],
                            "measured_s": round(sum(v["measured_s"] for v in against.values()), 1)})
            if r["returncode"]:
                print("".join(line for _, line in r["lines"][-30:]), flush=True)
                break
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="fresh clones, one after the other")
    ap.add_argument("--no-rerun", action="store_true", help="skip the second `make demo` in each clone")
    ap.add_argument("--keep", action="store_true", help="keep each clone, its cache and its logs")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    for k in range(args.runs):
        one_run(k, args)


if __name__ == "__main__":
    main()
