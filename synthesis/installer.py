"""`pip install` through uv, with pip's own configuration: the same indexes, find-links and constraints.

    python -m synthesis.installer --python .venv/bin/python [--compile-bytecode] [pip install arguments ...]

uv installs the same pinned packages faster than pip (the project's environment here: 16 s against pip's 95 s, 63 s
with its bytecode compiled, as pip always does), but it reads none of pip's configuration (pip.conf,
PIP_* variables). On a machine whose pip is set up to take torch's CPU build from a local folder, uv on its own
could resolve torch from PyPI's CUDA build. So the sources pip is configured with are read from `pip config list`
and handed to uv as its own flags, with pip's rule for several indexes (the best version over all of them). The
versions themselves come from a constraints file the caller passes (`constraints.txt`: every package at the
version the tests passed with), so uv and pip install the same environment. If uv is missing or fails, pip runs
the same install instead. Standard library only: the Makefile runs this before anything is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# uv's flag, also taken here for pip (which compiles anyway): where PYTHONDONTWRITEBYTECODE is set, as on this
# machine kind, nothing ever writes a .pyc, so without it every process compiles every module it imports
COMPILE = "--compile-bytecode"
# pip's settings that choose where packages come from, as uv spells them
_LISTS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "constraint": "--constraint"}
_SCALARS = {"index-url": "--index-url"}


def pip_config(python: str | Path) -> dict[str, list[str]]:
    """pip's configured values by key (`global.find-links` and PIP_FIND_LINKS both give `find-links`), the
    environment's last, as pip lets it win."""
    out = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    found: dict[str, list[str]] = {}
    for line in sorted(out.splitlines(), key=lambda s: s.startswith(":env:")):
        name, _, value = line.partition("=")
        found.setdefault(name.rsplit(".", 1)[-1], []).extend(value.strip().strip("'\"").split())
    return found


def uv_flags(config: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """uv's flags and environment for pip's configuration."""
    flags = ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version over every index
    for key, flag in _LISTS.items():
        for value in dict.fromkeys(config.get(key, [])):
            flags += [flag, value]
    for key, flag in _SCALARS.items():
        if config.get(key):
            flags += [flag, config[key][-1]]
    if "no-index" in config:
        flags.append("--no-index")
    return flags, ({"SSL_CERT_FILE": config["cert"][-1]} if config.get("cert") else {})


def uv_binary() -> str | None:
    """uv beside this Python (the project's environment has it), or on PATH."""
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def install(python: str | Path, args: list[str], log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            capture: bool = False, compile_bytecode: bool = False) -> subprocess.CompletedProcess:
    """`pip install ARGS` into the environment of `python`: by uv with pip's sources, else by pip.
    `compile_bytecode`: uv compiles the modules' bytecode too, as pip always does (else every import compiles
    them where PYTHONDONTWRITEBYTECODE is set, and the first one elsewhere: vLLM's server took 93 s to its first
    start in a fresh uv-made venv, 50 s with its bytecode)."""
    if (uv := uv_binary()) is not None:
        flags, env = uv_flags(pip_config(python))
        flags += [COMPILE] if compile_bytecode else []
        res = subprocess.run([uv, "pip", "install", "--python", str(python), *flags, *args], env=os.environ | env,
                             capture_output=capture, text=True)
        if res.returncode == 0:
            return res
        log(f"note: uv could not install {' '.join(args)} (exit {res.returncode}); pip installs it instead")
    return subprocess.run([str(python), "-m", "pip", "install", *args], capture_output=capture, text=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--python":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    args = [a for a in argv[2:] if a != COMPILE]
    return install(argv[1], args, compile_bytecode=COMPILE in argv[2:]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
