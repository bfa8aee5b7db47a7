"""This machine's pace: how fast the student's compute ran here against the plan's per-unit costs, measured by
its last run, kept in the cache and charged by the next plan on this machine.

pond/costs.py's figures are per CPU class, and the class without native bf16 was measured on the slowest CPU of
this machine kind (the AVX2-only EPYC): on a faster CPU of that class the plan said ~1.9x what the run took (a Zen 5
EPYC capped to AVX2, README). After a run, its student stages (training, evaluation, experiment), each planned at
`MIN_STAGE_S` or more, give one ratio, measured over planned seconds, kept per CPU and cost class in `pace.json`
(`POND_PACE_FILE`, else the cache folder). The next plan charges the student's costs (training, scoring, IFD,
benchmark answers) at that pace and says so. The teacher's and the curation steps' costs are not scaled: the run
times them as one stage, and a vLLM server's speed need not follow the student's.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from curation.settings import default_cache_dir, describe_cpu
from curation.store import write_json
from pond.costs import scaled_student

# the plan's stage -> the run's timing of it (pond.pipeline's stage keys)
STUDENT_STAGES = {"training": "train", "evaluation": "evaluate", "experiment": "experiment"}
# a stage planned shorter than this is mostly fixed costs (a resumed stage, a tiny test): too noisy to learn from
MIN_STAGE_S = 20.0


def pace_file(cache_dir: Path | None = None) -> Path:
    return Path(os.environ.get("POND_PACE_FILE") or (cache_dir or default_cache_dir()) / "pace.json")


def _key(label: str) -> str:
    return f"{describe_cpu()} | {label}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the plan charges the class's costs
    return data if isinstance(data, dict) else {}


def paced(costs, cache_dir: Path | None = None):
    """`costs` with the student's figures at this machine's recorded pace; unchanged where none is recorded."""
    if costs is None:
        return None
    entry = _read(pace_file(cache_dir)).get(_key(costs.label))
    r = entry.get("pace") if isinstance(entry, dict) else None
    if not isinstance(r, (int, float)) or r <= 0:
        return costs  # none recorded, or an edited file's nonsense: the class's costs
    return scaled_student(
        costs, r, pace=r,
        sources=costs.sources + (f"this machine's pace x{r:.2f} for the student's compute, from {entry.get('run')} "
                                 f"({entry.get('when')}; {pace_file(cache_dir)})",))


def record(plan: dict, timings: dict[str, float], run: Path, cache_dir: Path | None = None) -> float | None:
    """Keep the pace that this run's student stages measured against its plan; the new pace (None: no stage to
    learn from). The plan's own pace is folded in, so a paced plan's error corrects the pace rather than
    replacing it."""
    planned = {s: plan.get("seconds", {}).get(s, [0.0, 0.0])[1] for s in STUDENT_STAGES}
    # a stage the plan found done (a resume) is planned at 0 and left out, as is one the run did not time
    stages = [s for s, sec in planned.items()
              if sec > 0 and sec >= MIN_STAGE_S and timings.get(STUDENT_STAGES[s], 0) > 0]
    if "costs" not in plan or not stages:
        return None
    ratio = sum(timings[STUDENT_STAGES[s]] for s in stages) / sum(planned[s] for s in stages)
    pace = round(plan.get("pace", 1.0) * ratio, 3)
    path = pace_file(cache_dir)
    paces = _read(path)
    paces[_key(plan["costs"])] = {"pace": pace, "run": str(Path(run).resolve()), "stages": stages,
                                  "when": time.strftime("%Y-%m-%d %H:%M")}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(paces, path, sort_keys=True)
    return pace
