"""`pond run --estimate`, and the plan line that opens `pond run`: what a recipe will do and roughly
how long each stage takes on this machine, sending nothing and writing nothing.

Counts: every teacher request (a step module's `estimate`), every forward pass of a local scorer
(`estimate_compute`), looked up through the step table (pond.steps). Rows reaching a step are
bounded by the rows entering curation (every row is charged at every step, but where a step's
options say how many rows it passes on: `estimated_rows_out`, a draw, a selection, a generator),
so request and token counts are upper bounds. A generator's new rows are charged to later teacher
steps (their `estimate`'s `added`: with `judge_picks`, every answer candidate). Times: those
counts times the per-unit costs of this machine's class (pond.costs, each figure naming where it
was measured).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pond import costs as cost_model
from pond import layout
from pond.pace import paced
from pond.recipe import Recipe
from pond.steps import STEPS

STAGES = ("curation", "teacher", "training", "evaluation", "experiment")


@dataclass
class Estimate:
    """What `estimate` found: per-step lines, teacher totals, and seconds per stage (None: not timed)."""

    lines: list[str] = field(default_factory=list)
    requests: int = 0
    max_tokens: int = 0
    fewest_requests: int = 0  # if every calibrated judge is refused in its first calibration round
    rows: int = 0
    seconds: dict[str, float | None] = field(default_factory=dict)
    fewest_seconds: dict[str, float] = field(default_factory=dict)  # a stage's time in that case, where less
    notes: dict[str, str] = field(default_factory=dict)
    costs: cost_model.Costs | None = None
    heldout: int | None = None  # rows the recipe sets aside as the held-out set (an upper bound)

    def total(self) -> dict[str, int]:
        return {"requests": self.requests, "max_tokens": self.max_tokens}


@dataclass
class _Flow:
    """What the estimate carries from step to step: the rows reaching the next step (an upper bound),
    the rows generators added so far, whether the shared embeddings are paid, and the seconds so far."""

    rows: int
    added: int = 0
    embedded: bool = False
    curation: float = 0.0
    teacher: float = 0.0
    teacher_fewest: float = 0.0  # the teacher's seconds if every calibrated judge is refused in its first round
    served: dict[str, float] = field(default_factory=dict)  # a served teacher's start, counted once
    first_teacher: str | None = None  # the teacher pond starts before ingest (pond.runner: _start_teacher_early)
    ahead: float = 0.0  # the curation seconds before its step, which its start overlaps


def input_rows(recipe: Recipe, out: Path | None, base_dir: Path) -> pl.DataFrame:
    """The rows entering curation: the run's finished ingest (read, not touched) if it read the same
    input, else the input read in memory with ingest's own reader. Nothing is written anywhere."""
    from curation.ingest import IngestError, concat_frames, iter_batches

    if _same_ingest(recipe, out, base_dir):
        from pond.executors.shards import read_output

        return read_output(layout.ingest_output(out))
    kept = concat_frames([k for k, _ in iter_batches(recipe.input, base_dir) if len(k)])
    if kept.is_empty():
        raise IngestError(f"{recipe.input.path}: no usable rows")
    return kept


def _same_ingest(recipe: Recipe, out: Path | None, base_dir: Path) -> bool:
    """A finished ingest of the same input options and the same files (their recorded hashes)."""
    from curation.ingest import expand_paths
    from pond.recipe import RecipeError, parse_recipe
    from curation.store import file_digest

    if not _done(out, layout.STEPS, layout.INGEST, layout.DONE) or not _done(out, layout.RECIPE):
        return False
    try:
        earlier = parse_recipe(Path(out, layout.RECIPE).read_text(), str(Path(out, layout.RECIPE)))
    except (RecipeError, OSError):
        return False
    recorded = layout.read_json(layout.step_dir(out, layout.INGEST) / layout.STATS).get("inputs")
    files = expand_paths(recipe.input.path, base_dir, recipe.input.format)
    return earlier.input == recipe.input and recorded == {str(p): file_digest(p) for p in files}


def estimate(recipe: Recipe, out: Path | None, base_dir: Path, *, train: bool = True,
             cache_dir: Path | None = None) -> Estimate:
    """Count and time every stage of `recipe` run into `out` (see the module docstring); what the run
    folder already holds costs no time (a resume skips it). `out` None: a run from scratch."""
    from curation.settings import default_cache_dir
    from curation.step import StepContext
    from synthesis.teachers import Teachers

    cache_dir = cache_dir or default_cache_dir()
    rows = input_rows(recipe, out, base_dir)
    ctx = StepContext(seed=recipe.seed, cache_dir=cache_dir, run_dir=None, step_dir=None, base_dir=base_dir,
                      teachers=Teachers(recipe.teachers))
    est = Estimate(rows=len(rows), costs=paced(cost_model.machine_costs(), cache_dir))
    flow = _Flow(rows=len(rows), curation=len(rows) / est.costs.ingest_rows_per_s if est.costs else 0.0)
    for i, step in enumerate(recipe.steps, start=1):
        _estimate_step(est, flow, recipe, i, step, rows, ctx, out)
    if est.costs:
        est.seconds["curation"] = flow.curation
        starts = sum(flow.served.values()) - min(flow.served.get(flow.first_teacher, 0.0), flow.ahead)
        est.seconds["teacher"] = flow.teacher + starts
        if flow.teacher_fewest < flow.teacher:
            est.fewest_seconds["teacher"] = flow.teacher_fewest + starts
    else:
        est.notes["all"] = "no per-unit costs measured on a GPU: stages not timed"
    if flow.served:
        est.notes["teacher"] = ", ".join(_start_note(t, s, flow) for t, s in flow.served.items())
    if train and recipe.train is not None:
        _time_training(est, recipe, out, flow.rows, est.costs)
    return est


def _estimate_step(est: Estimate, flow: _Flow, recipe: Recipe, index: int, step, rows: pl.DataFrame, ctx,
                   out: Path | None) -> None:
    """One step's line and seconds (none for a step the run folder holds), then the rows it passes on."""
    spec = STEPS[step.kind]
    name = layout.step_name(index, step.kind)
    c = None if _done(out, layout.STEPS, name, layout.DONE) else est.costs  # the costs of work still to do
    compute, requests = spec.module_function("estimate_compute"), spec.module_function("estimate")
    if compute is not None:  # a local model scores rows: forward passes
        _forward_passes(est, flow, name, compute(rows, step.options, ctx.cache_dir), c)
    elif requests is not None:  # a teacher step: requests
        _teacher_requests(est, flow, recipe, name, step, requests(rows, step.options, ctx, flow.added), c)
    elif c:
        _rows_through(flow, spec, c)
    after = _rows_after(step.options, flow.rows)
    flow.added += max(after - flow.rows, 0)
    if spec.writes_heldout:
        est.heldout = flow.rows - after
    flow.rows = after


def _forward_passes(est: Estimate, flow: _Flow, name: str, work: dict[str, Any], c: cost_model.Costs | None) -> None:
    est.lines.append(f"{name}: {work['to_score']} rows to score ({work['forward_passes']} forward passes "
                     f"of {work['model']}), {work['cached']} already cached, "
                     f"{work['rows'] - work['with_answer']} without an answer")
    if c:
        flow.curation += work["forward_passes"] * c.ifd_pass_s * work.get("max_seq_len", 256) / 256


def _teacher_requests(est: Estimate, flow: _Flow, recipe: Recipe, name: str, step, work: dict[str, int],
                      c: cost_model.Costs | None) -> None:
    tokens = (f"{work['prompt_tokens']} prompt + {work['completion_tokens']} completion tokens"
              if "prompt_tokens" in work else f"{work['max_tokens']} tokens")
    cached = f", {work['cached']} more already cached (free)" if "cached" in work else ""
    est.lines.append(f"{name}: {work['requests']} requests, at most {tokens}{cached}")
    est.requests += work["requests"]
    est.fewest_requests += work.get("fewest", work["requests"])
    est.max_tokens += work["max_tokens"]
    per_request = _request_seconds(flow, recipe, step, c)
    flow.teacher += work["requests"] * per_request
    flow.teacher_fewest += work.get("fewest", work["requests"]) * per_request


def _rows_through(flow: _Flow, spec, c: cost_model.Costs) -> None:
    """A step without a model of its own: its rows at its measured rate; an embedding step embeds them,
    once for the run (the embedding cache serves the later embedding steps)."""
    if spec.embeds_rows:
        flow.curation += 0.0 if flow.embedded else flow.rows * c.embed_s
        flow.embedded = True
    else:
        flow.curation += flow.rows / cost_model.step_rows_per_s(spec)


def _done(out: Path | None, *parts: str) -> bool:
    """Whether the run folder already holds this output (a resume reuses it)."""
    return out is not None and Path(out, *parts).exists()


def _rows_after(options, rows: int) -> int:
    """Rows a step passes on, as an upper bound: its options' `estimated_rows_out` where the step draws,
    chooses or adds a known number of rows, else the rows it read (a filter may keep them all)."""
    rows_out = getattr(options, "estimated_rows_out", None)
    return rows if rows_out is None else rows_out(rows)


def _request_seconds(flow: _Flow, recipe: Recipe, step, c: cost_model.Costs | None) -> float:
    """Seconds of one request of a teacher step (0 where not timed); a served teacher's start is counted
    once in `flow.served`, and the first teacher a step needs is the one pond starts before ingest."""
    name = step.options.teacher_needed()
    if c is None or name is None:  # done already, or no row of this step needs a model
        return 0.0
    if flow.first_teacher is None:
        flow.first_teacher, flow.ahead = name, flow.curation
    teacher = recipe.teachers.get(name)
    if teacher is None or teacher.serve is None:
        flow.served.setdefault(f"{name} (your server)", 0.0)  # its speed is not this machine's: not timed
        return 0.0
    params = cost_model.model_params(teacher.serve.model or teacher.model)
    flow.served.setdefault(name, cost_model.by_size(c.serve_start_s, params))
    per_request = cost_model.by_size(c.request_s, params)
    return per_request * (cost_model.ALL_CORES_REQUEST if teacher.serve.cpu_cores == "all" else 1.0)


def _start_note(name: str, seconds: float, flow: _Flow) -> str:
    if not seconds:
        return f"{name}: not timed"
    hidden = min(seconds, flow.ahead) if name == flow.first_teacher else 0.0
    return f"{name} start {seconds:.0f} s" + (f" ({hidden:.0f} s of it while curation runs)" if hidden >= 1 else "")


def _time_training(est: Estimate, recipe: Recipe, out: Path | None, rows: int, c: cost_model.Costs | None) -> None:
    """Training, evaluation and the experiment: every training run's steps and load, every model's scored rows
    and benchmark answers, at the measured cost of each."""
    t = recipe.train
    steps = t.max_steps or math.ceil(t.epochs * rows / (t.batch_size * t.grad_accum))
    est.notes["training"] = f"{steps} steps of {t.batch_size * t.grad_accum} x {t.max_seq_len} tokens"
    if c:
        adapter_done = _done(out, layout.ADAPTER, layout.ADAPTER_CONFIG)
        est.seconds["training"] = 0.0 if adapter_done else _training_seconds(recipe, steps, c)
    # the held-out rows every model is scored on (evaluation.scoring.prepare_heldout applies evaluate.limit)
    heldout = (recipe.evaluate and recipe.evaluate.limit) or est.heldout or cost_model.REF_HELDOUT_ROWS
    e = recipe.evaluate
    if e is not None:
        untimed = e.n_generate > 0 or e.judge is not None
        est.notes["evaluation"] = f"{heldout} held-out rows" + (", answers and judging not timed" if untimed else "")
        if c:  # the base model and the adapter
            done = _done(out, layout.EVAL_DONE)
            est.seconds["evaluation"] = 0.0 if done else _scoring_seconds(recipe, 2, heldout, c) + _answers(e, 2, c)
    if recipe.experiment is not None:
        _time_experiment(est, recipe, out, steps, heldout, c)


def _time_experiment(est: Estimate, recipe: Recipe, out: Path | None, steps: int, heldout: int,
                     c: cost_model.Costs | None) -> None:
    """Every arm x seed trained (but the run's own training, reused), then scored and answering the benchmark."""
    x, e = recipe.experiment, recipe.evaluate
    arm_steps = x.steps or steps
    reused = _runs_own_training(recipe, arm_steps, steps)
    jobs = len(x.arms) * len(x.seeds) - reused
    est.notes["experiment"] = (f"{len(x.arms)} arms x {len(x.seeds)} seed{'s' * (len(x.seeds) != 1)} x "
                               f"{arm_steps} steps" + (", the run's own training reused" if reused else ""))
    if not c:
        return
    # the base model and a reused arm were scored by the evaluation already (evaluation.loss_memo)
    models = jobs + (0 if reused and e else 1)
    scoring = answers = 0.0
    if e:
        scoring = _scoring_seconds(recipe, models, 0, c)  # the reference rows
        if x.score_heldout:
            scoring += _scoring_seconds(recipe, jobs, heldout, c, reference=False)
        answers = _answers(e, len(x.arms) * len(e.benchmark_seeds or x.seeds) + 1, c)
    done = _done(out, layout.EXPERIMENT, layout.REPORT)
    est.seconds["experiment"] = 0.0 if done else jobs * _training_seconds(recipe, arm_steps, c) + scoring + answers
    if scoring or answers:
        est.notes["experiment"] += f" + scoring and benchmark answers {minutes(scoring + answers)}"


def _training_seconds(recipe: Recipe, steps: int, c: cost_model.Costs) -> float:
    """One training run: loading the student and writing the adapter, then its steps."""
    t = recipe.train
    scale = cost_model.student_scale(t.student, t.batch_size, t.grad_accum, t.max_seq_len)
    return c.train_load_s + steps * c.step_s(t.method) * scale


def _scoring_seconds(recipe: Recipe, models: int, heldout: int, c: cost_model.Costs,
                     reference: bool = True) -> float:
    """`models` models' losses on `heldout` held-out rows and (`reference`) on the reference rows, each row of at
    most 256 tokens a measured row, a longer cut a proportionally dearer one."""
    e = recipe.evaluate
    rows = heldout * (recipe.train.max_seq_len or 512) / 256
    if reference and e.reference:
        rows += (e.reference_rows or 805) * e.reference_max_seq_len / 256
    return models * rows * c.score_row_s * cost_model.param_scale(recipe.train.student)


def _answers(e, models: int, c: cost_model.Costs) -> float:
    """Benchmark answers of `models` models: each merged and served once, at most max_new_tokens an answer."""
    if not (e.benchmark and c.generate_tok_s):
        return 0.0
    prompts = e.benchmark_sample or (541 if e.benchmark == "ifeval" else 80)
    return models * (c.generation_start_s + prompts * e.max_new_tokens / c.generate_tok_s)


def _runs_own_training(recipe: Recipe, arm_steps: int, steps: int) -> int:
    """1 if an arm x seed trains what `pond run` trained (the final set, the run's seed, as many steps: the
    token reference of equal_tokens or any arm of equal_steps), which the experiment reuses (train's same_as)."""
    x = recipe.experiment
    final = [a.name for a in x.arms if a.data == "curated_plus_synthetic"]
    reference = x.token_reference or x.arms[0].name
    same_steps = x.budget == "equal_steps" or (x.budget == "equal_tokens" and reference in final)
    return int(bool(final) and recipe.seed in x.seeds and same_steps and arm_steps == steps)


# -- what is printed ----------------------------------------------------------------------------------

REFUSED_EARLY = "if calibration refuses the judge in its first round"


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _span(est: Estimate, stage: str | None = None) -> str:
    """A stage's time (None: the total), as a range where a judge refused early would make it shorter."""
    high = est.seconds[stage] if stage else sum(est.seconds.values())
    low = (est.fewest_seconds.get(stage, high) if stage
           else high - sum(est.seconds[k] - v for k, v in est.fewest_seconds.items()))
    return minutes(high) if low >= high else f"{minutes(low)} to {minutes(high)}"


def _requests(est: Estimate) -> str:
    if est.fewest_requests >= est.requests:
        return f"{est.requests} requests"
    return f"{est.fewest_requests} to {est.requests} requests ({est.fewest_requests} {REFUSED_EARLY})"


def stage_lines(est: Estimate) -> list[str]:
    """One line per stage with its time on this machine, then the total and where the costs come from."""
    from curation.settings import describe_cpu

    if est.costs is None:
        return [f"time: {est.notes['all']}"]
    lines = [f"time on this machine ({describe_cpu()}; per-unit costs of a {est.costs.label}, pond/costs.py):"]
    details = {"curation": f"{est.rows} rows in, each charged at every step (an upper bound)",
               "teacher": _requests(est) + (f"; {est.notes['teacher']}" if "teacher" in est.notes else "")}
    for stage in STAGES:
        if stage in est.seconds:
            note = details.get(stage) or est.notes.get(stage, "")
            lines.append(f"  {stage:<11} {_span(est, stage):>9}  {note}")
    lines.append(f"  {'total':<11} {_span(est):>9}")
    lines.append("  costs from: " + "; ".join(est.costs.sources))
    return lines


def plan_seconds(est: Estimate) -> dict[str, list[float]]:
    """Each timed stage's [shortest, longest] seconds as the plan line says them (the manifest's `plan`, which
    bench/demo.py sets beside the stages' measured times)."""
    return {s: [round(min(est.fewest_seconds.get(s, est.seconds[s]), est.seconds[s]), 1), round(est.seconds[s], 1)]
            for s in STAGES if est.seconds.get(s)}


def plan_line(recipe: Recipe, est: Estimate) -> str:
    """The first line of `pond run`: what the whole run will do and roughly how long it takes here."""
    parts = [f"{est.rows} rows through {len(recipe.steps)} steps"]
    if est.requests:
        parts.append(f"up to {est.requests} teacher requests")
    for stage in ("training", "evaluation", "experiment"):
        if stage in est.notes:
            parts.append(f"{stage} ({est.notes[stage]})")
    what = f"plan: {recipe.name}: " + ", ".join(parts)
    if est.costs is None:
        return f"{what}; {est.notes['all']}"
    timed = ", ".join(f"{s} {_span(est, s)}" for s in STAGES if est.seconds.get(s))
    early = f", the shorter {REFUSED_EARLY}" if est.fewest_seconds else ""
    pace = f"; the student's compute at x{est.costs.pace:.2f}, this machine's pace" if est.costs.pace != 1 else ""
    return f"{what}; about {_span(est)} on this machine ({timed or 'all done earlier'}{early}{pace})"


def estimate_run(recipe: Recipe, out: Path, base_dir: Path, print_fn: Callable = print,
                 cache_dir: Path | None = None) -> dict[str, Any]:
    """`pond run --estimate`: every step's requests and compute, the totals, and a time per stage."""
    est = estimate(recipe, out, base_dir, cache_dir=cache_dir)
    for line in est.lines:
        print_fn(line)
    print_fn(f"total: {est.requests} requests, at most {est.max_tokens} tokens")
    for line in stage_lines(est):
        print_fn(line)
    return est.total() | {"seconds": {k: round(v, 1) for k, v in est.seconds.items()},
                          "fewest_seconds": {k: round(v, 1) for k, v in est.fewest_seconds.items()}}
