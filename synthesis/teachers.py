"""The one teacher handle: a run's teachers by recipe name, served exactly while something needs them.

`Teachers.session(name)` gives a curation step, the evaluation or an experiment alike a ready client (a
`TeacherSession`): the teacher's server is started first if pond serves it (`serve:` in the recipe) and
stopped when the block ends, unless something else still holds it. On a small machine two vLLM servers
side by side (writer and judge) would fight for the cores, so the runner also keeps a teacher up across
the consecutive steps that name it (`keep_only`) and no longer. Starting and adopting servers is
synthesis.server.running_teacher's job.

It lives in synthesis, below evaluation and pond, so that every part that needs a teacher takes this
handle and nothing else.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from curation.errors import ConfigError
from synthesis.cache import ResponseCache
from synthesis.client import TeacherConfig, TeacherSession


class Teachers:
    """The teachers of one run: their settings by name, and the servers pond started for them."""

    def __init__(self, configs: Mapping[str, Any] | None = None, cache_dir: Path | None = None,
                 log: Callable[[str], None] = lambda m: None):
        self.configs = {name: t if isinstance(t, TeacherConfig) else TeacherConfig.model_validate(t)
                        for name, t in (configs or {}).items()}
        self.cache_dir = cache_dir
        self.log = log
        self._running: dict[str, ExitStack] = {}
        self._starting: dict[str, Any] = {}  # servers started ahead of the step that needs them (start_early)

    def config(self, name: str) -> TeacherConfig:
        """Teacher `name`'s settings; a name the recipe does not define is one line listing those it does."""
        if name not in self.configs:
            known = ", ".join(sorted(self.configs)) or "none"
            raise ConfigError(f"teacher {name!r} is not defined in the recipe's `teachers:` (defined: {known})")
        return self.configs[name]

    @contextlib.contextmanager
    def session(self, name: str | None, cache: ResponseCache | Path | None = None) -> Iterator[TeacherSession]:
        """A ready client for teacher `name` while the block runs; a server started here stops at its end.
        `cache`: the response cache (or its file) its answers are kept in. `name` None: work that needs no
        model (rule-built edge cases answered by their seed rows) gets a client it never calls."""
        config = self.config(name) if name is not None else TeacherConfig(model="none")
        if isinstance(cache, (str, Path)):
            cache = ResponseCache(Path(cache))
        with self.serving(name):
            yield TeacherSession(config, cache)

    @contextlib.contextmanager
    def serving(self, name: str | None) -> Iterator[None]:
        """Teacher `name` answers while the block runs (None: nothing to serve); one started here stops."""
        started = name is not None and name not in self._running
        self.need(name)
        try:
            yield
        finally:
            if started:
                self.keep_only(n for n in self._running if n != name)

    def start_early(self, name: str | None) -> None:
        """Start teacher `name`'s server now without waiting for it, if pond serves it and nothing runs it yet;
        `need` then waits for it (or `keep_only` stops it, if the run ends before a step needs it)."""
        if name is None or name in self._running or name in self._starting:
            return
        from synthesis.server import prestart

        handle = prestart(self.config(name), cache_dir=self.cache_dir, log=self.log)
        if handle is not None:
            self._starting[name] = handle

    def need(self, name: str | None) -> None:
        """Make sure teacher `name` answers (started if pond serves it and it is not running yet; one started
        early is adopted)."""
        if name is None or name in self._running or self.config(name).serve is None:
            return
        from synthesis.server import running_teacher

        stack = ExitStack()
        stack.enter_context(running_teacher(self.configs[name], cache_dir=self.cache_dir, log=self.log))
        self._starting.pop(name, None)  # running_teacher adopted it (same port, ours) and stops it when done
        self._running[name] = stack

    def keep_only(self, wanted: Iterable[str | None]) -> None:
        """Stop every teacher pond started that `wanted` does not name."""
        names = set(wanted) - {None}
        for name in [n for n in self._running if n not in names]:
            self._running.pop(name).close()
        for name in [n for n in self._starting if n not in names]:
            self._starting.pop(name).stop()

    def close(self) -> None:
        self.keep_only(())


def teachers_of(ctx: Any) -> Teachers:
    """A step's teachers: the run's (StepContext.teachers), or none defined for a step called on its own."""
    return ctx.teachers if ctx is not None and ctx.teachers is not None else Teachers()
