"""The teacher response cache: one SQLite file per run (`runs/NAME/teacher-cache.sqlite`), and one
shared by every run (`$POND_CACHE_DIR/teacher-cache.sqlite`, the `judge` step's: a score of a row is
the same whichever recipe asks, so a second recipe over the same rows sends nothing).

A response is stored the moment it arrives, keyed by a hash of everything that determines it:
the model name, the messages, the sampling parameters (temperature, max_tokens, n, seed, ...) and
the output schema. Not in the key: the server URL and the API key (the same model behind another
URL answers the same), and nothing secret is ever written here.

A rerun, or a resume after a crash, finds every answered call here and sends nothing for it.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

CACHE_FILE = "teacher-cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(model: str, messages: list[dict], params: dict[str, Any], schema: dict | None) -> str:
    """sha256 of the canonical JSON of (model, messages, sampling params, schema)."""
    payload = {"model": model, "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
               "params": params, "schema": schema}
    return hashlib.sha256(canonical_json(payload).encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    """SQLite key -> response store; `path=None` keeps it in memory (tests, one-off calls)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop thread and the caller; the lock serialises them.
        self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", check_same_thread=False,
                                   isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if self.path:
                # WAL + NORMAL: a committed row survives a crash of this process, and a write costs
                # no fsync per call (which would cap throughput on slow disks).
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, request: dict, response: dict) -> None:
        usage = response.get("usage") or {}
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, canonical_json(request), canonical_json(response),
                 int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), time.time()),
            )

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def totals(self) -> dict[str, int]:
        """Calls stored and the tokens they cost when they were first sent."""
        with self._lock:
            n, p, c = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM responses"
            ).fetchone()
        return {"calls": n, "prompt_tokens": p, "completion_tokens": c}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shared_cache_path(cache_dir: Path) -> Path:
    """The teacher cache every run shares (keyed by model and full request, so runs cannot collide)."""
    return cache_dir / CACHE_FILE


def run_cache_path(run_dir: Path | None, cache_dir: Path) -> Path:
    """Where a run keeps its teacher cache: in the run directory, else the shared one."""
    return run_dir / CACHE_FILE if run_dir is not None else shared_cache_path(cache_dir)


def cached_keys(path: Path, keys: list[str]) -> set[str]:
    """Which of `keys` the cache at `path` holds; a missing file holds none (and is not created)."""
    if not keys or not path.is_file():
        return set()
    with ResponseCache(path) as cache:
        return {k for k in keys if k in cache}
