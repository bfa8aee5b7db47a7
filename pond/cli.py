"""The `pond` command line (typer)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from typer.core import TyperGroup

from curation.errors import PondError
from pond import __version__


class _Commands(TyperGroup):
    """Every command runs inside this: what the user can fix (PondError) is one line and exit 2, never a
    traceback. The one place it is caught, for the console script and for CliRunner alike."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PondError as exc:
            _fail(" ".join(str(exc).split()))


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  help="pond: curate, synthesise, train, evaluate.")
teacher_app = typer.Typer(no_args_is_help=True, help="start and stop a local vLLM teacher")
app.add_typer(teacher_app, name="teacher")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        print(f"pond {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")):
    """pond turns a noisy corpus into a small fine-tuning set, and proves whether it helps."""


def _load(recipe: Path):
    from pond.recipe import load_recipe

    loaded = load_recipe(recipe)
    for warning in loaded.warnings():
        console.print(f"[yellow]warning:[/yellow] {recipe}: {warning}", highlight=False, soft_wrap=True)
    return loaded


def _check_training(train_config, where: str = "") -> None:
    """`train.processes` against this machine's GPUs (or CPU cores), `train.student` against its folders and
    `train.target_modules` against the student's linear modules, before anything starts: one line (ConfigError,
    ModelNotFound) rather than a refusal after curation. With
    `where` (pond validate, which may check a GPU recipe on a laptop) a warning instead."""
    if train_config is None:
        return
    from curation.errors import ConfigError, ModelNotFound
    from curation.settings import resolve_model
    from training.distributed import processes_to_start

    try:
        student = resolve_model(train_config.student)
        if train_config.target_modules != "all-linear":  # torch is imported only for targets to check
            from training.model import check_targets_before_loading

            check_targets_before_loading(student, train_config.target_modules)
        if train_config.processes > 1:
            processes_to_start(train_config.processes, train_config.batch_size)
    except (ConfigError, ModelNotFound) as exc:
        if not where:
            raise
        console.print(f"[yellow]warning:[/yellow] {where}: {exc} (pond run here would refuse it)", highlight=False,
                      soft_wrap=True)


def _progress() -> Progress:
    """Bars with a count, the time so far and an ETA (rich's, from the speed so far); on a terminal,
    or anywhere with POND_PROGRESS=1."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False,
                    disable=not console.is_terminal and not _force_bars())


def _force_bars() -> bool:
    import os

    return os.environ.get("POND_PROGRESS") == "1"


def _tracker(progress: Progress):
    def track(items, description, total=None):
        if total is None:
            try:
                total = len(items)
            except TypeError:
                total = None
        yield from progress.track(items, total=total, description=description)

    return track


@app.command()
def validate(recipe: Path = typer.Argument(..., help="recipe YAML")):
    """Check a recipe; print it with every default resolved."""
    r = _load(recipe)
    _check_training(r.train, str(recipe))
    print(r.to_yaml(), end="")
    console.print(f"[green]ok[/green]: {recipe} ({len(r.steps)} steps)")


@app.command()
def run(recipe: Path = typer.Argument(..., help="recipe YAML"),
        out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<recipe name>)"),
        fresh: bool = typer.Option(False, "--fresh", help="delete the run directory first instead of resuming"),
        estimate: bool = typer.Option(False, "--estimate", help="print teacher requests, a token bound, rows a local "
                                                                "scorer would score and a time per stage on this "
                                                                "machine; send nothing, write nothing"),
        no_train: bool = typer.Option(False, "--no-train", help="stop after curation and synthesis"),
        executor: Optional[str] = typer.Option(None, "--executor",
                                               help="local or ray: where curation steps run (overrides the recipe)")):
    """Run a recipe: curation, synthesis, training and evaluation as the recipe says. Re-running resumes."""
    from pond.pipeline import estimate_run, run_pipeline

    r = _load(recipe)
    if executor is not None:
        if executor not in ("local", "ray"):
            _fail(f"--executor: expected local or ray, got {executor!r}")
        r.executor = executor
    out = out or Path("runs") / r.name
    if not no_train and not estimate:
        _check_training(r.train)
    if estimate:
        estimate_run(r, out, recipe.parent.resolve(), print_fn=print)
        return
    with _progress() as progress:
        summary = run_pipeline(r, out, recipe.parent.resolve(), fresh=fresh, train=not no_train,
                               track=_tracker(progress), log=lambda m: progress.console.print(m, highlight=False))
    print(summary)


@app.command()
def inspect(run_dir: Path = typer.Argument(..., help="a run directory"),
            id: Optional[str] = typer.Option(None, "--id", help="what happened to this row: its pond id or your own "
                                                                 "id (orig_id); exits 1 if there is none"),
            html: bool = typer.Option(False, "--html", help="write RUN/report.html (charts, one self-contained file)")):
    """Show a run: counts per step, rejection reasons with examples, teacher cost, adapter card."""
    from pond import inspect as insp
    from pond.layout import is_run

    if not is_run(run_dir):
        _fail(f"{run_dir}: not a pond run directory (no steps/)")
    if id:
        found = insp.find_id(run_dir, id)
        if found is None:
            console.print(f"{id}: not found in {run_dir} (neither a row id nor an orig_id)", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(1)
        print(found)
        return
    if html:
        from pond.report_html import write_report_html

        print(f"report: {write_report_html(run_dir)}")
        return
    insp.show(run_dir, Console())


@app.command()
def export(run_dir: Path = typer.Argument(..., help="a run directory"),
           to: str = typer.Option(..., "--to", help="hf, openai, sharegpt, alpaca, axolotl, llama-factory, lm-eval, or "
                                                     "dpo (the preference pairs, TRL's format)"),
           out: Optional[Path] = typer.Option(None, "--out", help="folder to write (default RUN/export/FORMAT[-ROWS])"),
           rows: Optional[str] = typer.Option(None, "--rows", help="curated (default; lm-eval: heldout), synthetic, "
                                                                   "rejected, heldout, or a step's kept set (its name)"),
           heldout: Optional[Path] = typer.Option(None, "--heldout", help="held-out file for --rows heldout "
                                                                           "(default RUN/heldout.parquet)")):
    """Write a run's rows for a trainer, the Hub or lm-evaluation-harness (see docs/in-and-out.md)."""
    from pond.export import export_run

    print(export_run(run_dir, to, out, rows, heldout).summary())


@app.command()
def train(source: Path = typer.Argument(..., help="a run directory (uses curated.parquet) or a Parquet file"),
          recipe: Optional[Path] = typer.Option(None, "--recipe", help="take the `train:` section from this recipe"),
          out: Optional[Path] = typer.Option(None, "--out", help="where adapter/ goes (default: the run directory)")):
    """Train the student on any curated set."""
    from pond.pipeline import train_only

    data = source / "curated.parquet" if source.is_dir() else source
    if not data.exists():
        _fail(f"{data}: no such file")
    cfg = _load(recipe).train if recipe else None
    _check_training(cfg)
    with _progress() as progress:
        print(train_only(data, out or (source if source.is_dir() else source.parent), cfg, track=_tracker(progress)))


@app.command()
def experiment(recipe: Path = typer.Argument(..., help="recipe YAML with an `experiment:` section"),
               out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)")):
    """Quality vs quantity: train every arm x seed with the same budget and compare on held-out data."""
    from pond.pipeline import run_experiment_recipe

    r = _load(recipe)
    if r.experiment is None:
        _fail(f"{recipe}: has no `experiment:` section")
    _check_training(r.train)
    with _progress() as progress:
        print(run_experiment_recipe(r, out or Path("runs") / r.name, recipe.parent.resolve(),
                                    track=_tracker(progress), log=lambda m: progress.console.print(m)))


@app.command()
def serve(run_dir: Path = typer.Argument(..., help="a run directory with a trained adapter"),
          port: Optional[int] = typer.Option(None, "--port", help="port on 127.0.0.1 (default 8020)"),
          stop: bool = typer.Option(False, "--stop", help="stop this run's server instead of starting it"),
          cpu_cores: Optional[str] = typer.Option(
              None, "--cpu-cores", help="CPU build: cores to pin it to, e.g. 0-3"),
          dtype: str = typer.Option("auto", "--dtype", help="auto, bf16 or fp32 (as `pond teacher serve`)"),
          max_model_len: int = typer.Option(2048, "--max-model-len", help="longest prompt + answer, in tokens")):
    """Serve the run's adapter on an OpenAI-compatible vLLM server; the model name is the run's name."""
    from pond import serve as srv

    if stop:
        ports = srv.stop_run(run_dir)
        print(f"stopped the server of {run_dir} on port {', '.join(map(str, ports))}" if ports
              else f"no server of {run_dir} started by `pond serve`")
        return
    served = srv.serve_run(run_dir, port=port or srv.DEFAULT_PORT, cpu_cores=cpu_cores, dtype=dtype,
                           max_model_len=max_model_len, log=console.print)
    print(served.describe())


@app.command()
def update(run_dir: Path = typer.Argument(..., help="a run directory with curated.parquet"),
           input: list[Path] = typer.Option(..., "--input", help="files, folders or globs of the new data drop"),
           more: Optional[list[Path]] = typer.Argument(None, help="more files of the drop (`--input a b c`)"),
           no_train: bool = typer.Option(False, "--no-train", help="check the retrain rule but train nothing")):
    """Add a data drop to a run's pond: its recipe on the new rows, dedup against the pond, drift, retrain rule."""
    from pond.update import update as add_drop

    with _progress() as progress:
        result = add_drop(run_dir, [*input, *(more or [])], track=_tracker(progress), retrain=not no_train,
                          log=lambda m: progress.console.print(m, highlight=False))
    r = result["retrain"]
    print(f"drop {result['drop']}: {result['in']} rows in, {result['kept']} kept; pond {result['pond_rows']} rows; "
          f"drift p = {result['drift'].get('p_value')} ({'drifted' if result['drift'].get('drifted') else 'no drift'}); "
          f"retrain: {('v' + str(r['version'])) if r.get('version') else ('fired' if r.get('fired') else 'no')}")


@app.command()
def status(run_dir: Path = typer.Argument(..., help="a run directory")):
    """The pond's generations, rows per drop, drift flags, adapter versions and the last comparison."""
    from pond.layout import is_run
    from pond.status import status_lines

    if not is_run(run_dir):
        _fail(f"{run_dir}: not a pond run directory (no steps/)")
    print("\n".join(status_lines(run_dir)))


@teacher_app.command("serve")
def teacher_serve(model: Optional[str] = typer.Option(None, "--model", help="HF model folder or a cached model name"),
                  port: int = typer.Option(8000, "--port", help="port on 127.0.0.1"),
                  cpu_cores: Optional[str] = typer.Option(
                      None, "--cpu-cores", help="CPU build: cores to pin it to, e.g. 0-3 (disjoint per server)"),
                  dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 only where the device computes it "
                                                                    "natively, else fp32), bf16 or fp32")):
    """Start a vLLM OpenAI-compatible server (creates its virtual environment once)."""
    from synthesis import server

    handle = server.serve(model, port=port, cpu_cores=cpu_cores, dtype=dtype, log=console.print)
    print(f"teacher ready: {handle.base_url} (model {handle.model}, dtype {handle.dtype}; log {handle.log_path})")


@teacher_app.command("stop")
def teacher_stop(port: int = typer.Option(8000, "--port", help="port the teacher listens on")):
    """Stop a teacher started by `pond teacher serve`."""
    from synthesis import server

    print("stopped" if server.stop(port) else f"no teacher started by pond on port {port}")


def entry() -> None:  # console script
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    entry()
