"""The one teacher lifecycle: a teacher pond serves (`serve:` in the recipe) runs exactly while
something needs it — a curation step, the evaluation, an experiment — and stops when nothing does.

On a small machine two vLLM servers side by side (writer and judge) would fight for the cores, so
a teacher is started only when the work at hand names it, and stopped as soon as no remaining
work does. Starting and adopting servers is synthesis.server.running_teacher's job.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any


class Teachers:
    """The served teachers of one run, by recipe name."""

    def __init__(self, configs: dict[str, Any], cache_dir: Path, log: Callable[[str], None] = lambda m: None):
        self.configs = configs
        self.cache_dir = cache_dir
        self.log = log
        self._running: dict[str, ExitStack] = {}

    def keep_only(self, wanted: Iterable[str | None]) -> None:
        """Stop every teacher pond started that `wanted` does not name."""
        names = set(wanted) - {None}
        for name in [n for n in self._running if n not in names]:
            self._running.pop(name).close()

    def need(self, name: str | None) -> None:
        """Make sure teacher `name` answers (started if pond serves it and it is not running yet)."""
        if name is None or name in self._running or getattr(self.configs[name], "serve", None) is None:
            return
        from synthesis.server import running_teacher

        stack = ExitStack()
        stack.enter_context(running_teacher(self.configs[name], cache_dir=self.cache_dir, log=self.log))
        self._running[name] = stack

    @contextlib.contextmanager
    def serving(self, name: str | None) -> Iterator[None]:
        """Teacher `name` answers while the block runs; one started here stops when it ends."""
        started = name is not None and name not in self._running
        self.need(name)
        try:
            yield
        finally:
            if started:
                self.keep_only(n for n in self._running if n != name)

    def close(self) -> None:
        self.keep_only(())
