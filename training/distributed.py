"""Training in several processes: DDP, one rank per GPU (or per share of the CPU cores, gloo backend).

Two ways in, one code path:

- **a launcher** (`torchrun`, `accelerate launch`, across nodes too) starts `pond train` once per rank
  and sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; every rank runs `train()`;
- **`train: {processes: N}`**: `train()` starts N local workers itself (`launch`), with the same
  environment a launcher sets, and each runs `train()` as one rank; the calling process only waits,
  relays rank 0's progress bar, and reads the result rank 0 wrote. This is how `pond run` and
  `pond experiment` train on a multi-GPU node without running curation or evaluation N times.

In both, the Hugging Face Trainer sees the environment and does DDP itself; pond adds that only rank 0
writes (the key, the seal of each checkpoint, the adapter, card, train-result.json and train.DONE),
after the other ranks have written their share of a checkpoint (their RNG states).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import Callable, Iterator

import torch

from curation.errors import ConfigError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """The one process that writes what several would otherwise race on."""
    return rank() == 0


def launched() -> bool:
    """This process is one rank of several, started by a launcher or by `launch`."""
    return world_size() > 1


def _capacity() -> tuple[int, str]:
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores"


def processes_to_start(requested: int, batch_size: int) -> int:
    """How many workers `train()` must start itself: `requested` (train.processes), or 1 when this
    process is already a rank (the launcher decided) or one was asked for. Checks the request first."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        # Rank 0 alone saves the final weights (and best/), which under FSDP would wait forever for the
        # other ranks' shards; and FSDP cannot be tested on a CPU (accelerate shards on accelerators only).
        raise ConfigError("pond trains with DDP, not FSDP: launch without accelerate's FSDP settings "
                          "(--use_fsdp or an FSDP config file)")
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else requested
    have, what = _capacity()
    if ranks_here > have:
        asked = f"{ranks_here} processes per node (the launcher's)" if launched() else f"train.processes={requested}"
        raise ConfigError(f"{asked} is more than this machine's {have} {what}; use at most {have}")
    ranks = world_size() if launched() else requested
    if batch_size % ranks:
        raise ConfigError(f"train.batch_size={batch_size} does not split over {ranks} processes; "
                          f"use a multiple of {ranks} (batch_size is the global micro-batch)")
    return 1 if launched() else requested


def wait_for_everyone() -> None:
    """A barrier across the ranks; nothing outside distributed training."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block, then every other rank does (which then finds rank 0's changes on disk)."""
    if not is_main():
        wait_for_everyone()
    yield
    if is_main():
        wait_for_everyone()


def launch(processes: int, fn: Callable, args: tuple, kwargs: dict, progress: Callable | None) -> None:
    """Run `fn(*args, **kwargs, progress=...)` in `processes` local workers, each one rank of a DDP group,
    and return when all have finished. Rank 0's progress calls drive `progress` here; a worker's error
    is raised here as itself, after the other workers are stopped."""
    import multiprocessing

    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    events = multiprocessing.get_context("spawn").SimpleQueue()
    workers = mp.start_processes(_worker, args=(processes, _free_port(), events, fn, args, kwargs),
                                 nprocs=processes, join=False, start_method="spawn")
    relay = _Relay(progress)
    try:
        while not workers.join(timeout=0.2):
            relay.drain(events)
    except ProcessException as e:
        relay.drain(events)
        raise relay.errors.get(e.error_index, e) from None
    finally:
        for p in workers.processes:
            if p.is_alive():  # the parent stopped early (Ctrl-C in the progress bar): so do the workers
                p.kill()
                p.join()
    relay.drain(events)
    relay.finish()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(index: int, processes: int, port: int, events, fn: Callable, args: tuple, kwargs: dict) -> None:
    _die_with_parent()
    # The workers share the threads the caller had (OMP_NUM_THREADS, else every core): N workers with
    # all of them each would oversubscribe the cores N times.
    env = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(processes),
                      LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      OMP_NUM_THREADS=str(max(1, threads // processes)))
    try:
        fn(*args, **kwargs, progress=_Ticks(events) if index == 0 else None)
    except BaseException as e:
        with contextlib.suppress(Exception):  # an error that does not pickle is reported by its traceback
            events.put(("error", index, e))
        raise


def _die_with_parent() -> None:
    """A worker whose parent is killed (kill -9 included) is killed too, instead of training on and
    writing checkpoints under the rerun that resumes from them. Linux only (prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


class _Ticks:
    """Rank 0's stand-in for the caller's progress wrapper: each item it hands out is announced to the
    parent, which advances the real wrapper by one (training.callbacks.ProgressCallback's contract)."""

    def __init__(self, events):
        self.events = events

    def __call__(self, iterable, description: str, total: int):
        self.events.put(("begin", description, total))
        return self._relay(iterable)

    def _relay(self, iterable):
        for item in iterable:
            self.events.put(("next",))
            yield item


class _Relay:
    """The parent's side of `_Ticks`, and the errors the workers reported, by rank."""

    def __init__(self, progress: Callable | None):
        self.progress = progress
        self.it: Iterator | None = None
        self.errors: dict[int, BaseException] = {}

    def drain(self, events) -> None:
        while not events.empty():
            kind, *rest = events.get()
            if kind == "begin" and self.progress is not None:
                description, total = rest
                self.it = iter(self.progress(range(total), description, total))
            elif kind == "next" and self.it is not None:
                next(self.it, None)
            elif kind == "error":
                self.errors.setdefault(rest[0], rest[1])

    def finish(self) -> None:
        if self.it is not None:
            for _ in self.it:  # let the wrapper finish (closes its bar)
                pass
