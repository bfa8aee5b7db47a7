"""What the user can fix is one line and a non-zero exit, never a traceback (curation.errors.PondError,
caught once, by pond.cli's command group): a student that does not exist, a teacher that cannot start, a
training configuration that cannot train."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = [{"messages": [{"role": "user", "content": f"question {i}: why do cats purr when they are content?"},
                      {"role": "assistant", "content": f"answer {i}: cats purr to signal comfort and to soothe."}]}
        for i in range(12)]
RECIPES = {
    "student": """name: bad_student
input: {path: rows.jsonl}
steps:
  - exact_dedup: {}
train: {student: no-such-student-anywhere, max_steps: 1, batch_size: 2, max_seq_len: 64}
""",
    "training": """name: bad_training
input: {path: rows.jsonl}
steps:
  - exact_dedup: {}
train: {student: smollm2-135m-instruct, method: lora, target_modules: [no_such_module], max_steps: 1, batch_size: 2,
        max_seq_len: 64}
""",
    "teacher": """name: bad_teacher
input: {path: rows.jsonl}
steps:
  - judge: {rubric: helpfulness, min_score: 5, teacher: judge, calibrate: false}
teachers:
  judge: {model: no-such-model-anywhere, serve: {model: no-such-model-anywhere, port: 8099}}
""",
}


def _pond_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the console script's own entry point, where the one-line rule lives
    code = "import sys; from pond.cli import entry; sys.argv = ['pond', *sys.argv[1:]]; entry()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("what, says", [("student", "student 'no-such-student-anywhere' not found"),
                                        ("training", "target_modules ['no_such_module'] match no linear module"),
                                        ("teacher", "no-such-model-anywhere: not a model folder")])
def test_a_problem_the_user_can_fix_is_one_line(tmp_path, what, says):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "r.yaml").write_text(RECIPES[what])
    res = _pond_cli(tmp_path, "run", "r.yaml", "--out", "run")
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and "╭" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], out
    if what in ("student", "training"):  # found before curation starts, not after it
        assert not (tmp_path / "run").exists()


def test_more_processes_than_cores_fails_before_anything_starts_and_validate_warns(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "r.yaml").write_text(f"name: many\ninput: {{path: rows.jsonl}}\nsteps:\n  - exact_dedup: {{}}\n"
                                     f"train: {{max_steps: 1, batch_size: {2 * (cores + 1)}, processes: {cores + 1}}}\n")
    res = _pond_cli(tmp_path, "run", "r.yaml", "--out", "run")
    out = res.stdout + res.stderr
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in out, out
    assert len(errors) == 1 and f"train.processes={cores + 1} is more than this machine's {cores} CPU cores" in errors[0]
    assert not (tmp_path / "run").exists()  # curation did not start
    res = _pond_cli(tmp_path, "validate", "r.yaml")  # a GPU recipe may be checked on a laptop: a warning only
    assert res.returncode == 0 and "warning:" in res.stderr and "pond run here would refuse it" in res.stderr, res.stderr


def test_dpo_without_preference_pairs_is_refused_by_validate_and_run(tmp_path):
    (tmp_path / "r.yaml").write_text("name: d\ninput: {path: rows.jsonl}\nsteps:\n  - exact_dedup: {}\n"
                                     "train: {method: dpo}\n")
    for command in ("validate", "run"):
        res = _pond_cli(tmp_path, command, "r.yaml")
        out = res.stdout + res.stderr
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert res.returncode == 2 and len(errors) == 1, out
        assert "train.method: dpo trains on preference pairs" in errors[0] and "`preference_pairs` step" in errors[0]
    assert not (tmp_path / "runs").exists()


def test_export_help_lists_every_format_pond_export_knows():
    from typer.testing import CliRunner

    from pond.cli import app
    from pond.export import FORMATS, PAIR_FORMATS

    res = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "--to" in x)
    assert all(f in line for f in FORMATS + PAIR_FORMATS), line
    assert "dpo (the preference pairs" in line
