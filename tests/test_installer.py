"""synthesis.installer: uv gets pip's sources as its own flags, and pip installs where uv cannot."""
from __future__ import annotations

import subprocess
import sys

from synthesis import installer

PIP_CONFIG = """global.cert='/etc/ssl/certs/ca.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
:env:.find-links='/opt/wheels /srv/more-wheels'
:env:.default-timeout='180'
"""


def test_pips_sources_become_uvs_flags(monkeypatch):
    monkeypatch.setattr(installer.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=PIP_CONFIG, stderr=""))
    flags, env = installer.uv_flags(installer.pip_config(sys.executable))
    assert flags == ["--index-strategy", "unsafe-best-match",
                     "--find-links", "/opt/wheels", "--find-links", "/srv/more-wheels",
                     "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "file:///opt/pypi-more/simple",
                     "--constraint", "/etc/xdg/pip/constraints.txt"]
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca.crt"}
    assert installer.uv_flags({"index-url": ["a", "b"], "no-index": [""]})[0][-3:] == ["--index-url", "b", "--no-index"]


def test_pip_installs_what_uv_cannot(monkeypatch):
    calls, notes = [], []

    def run(cmd, **kw):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "pip"] and cmd[3] == "config":
            return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")
        return subprocess.CompletedProcess(cmd, 1 if cmd[0] == "/bin/uv" else 0, stdout="", stderr="")

    monkeypatch.setattr(installer.subprocess, "run", run)
    monkeypatch.setattr(installer, "uv_binary", lambda: "/bin/uv")
    assert installer.install("/env/bin/python", ["-q", "x==1"], notes.append).returncode == 0
    assert calls[-2][:5] == ["/bin/uv", "pip", "install", "--python", "/env/bin/python"]
    assert calls[-1] == ["/env/bin/python", "-m", "pip", "install", "-q", "x==1"]
    assert notes == ["note: uv could not install -q x==1 (exit 1); pip installs it instead"]
    monkeypatch.setattr(installer, "uv_binary", lambda: None)  # no uv at all: pip alone, nothing to say
    calls.clear()
    installer.install("/env/bin/python", ["y"], notes.append)
    assert calls == [["/env/bin/python", "-m", "pip", "install", "y"]] and len(notes) == 1


def test_bytecode_is_compiled_by_uv_when_asked_and_pip_is_not_told(monkeypatch):
    calls = []
    monkeypatch.setattr(installer.subprocess, "run", lambda cmd, **kw: (
        calls.append(cmd), subprocess.CompletedProcess(cmd, 1 if cmd[0] == "/bin/uv" else 0, stdout="", stderr=""))[1])
    monkeypatch.setattr(installer, "pip_config", lambda python: {})
    monkeypatch.setattr(installer, "uv_binary", lambda: "/bin/uv")
    assert installer.main(["--python", "/env/bin/python", "--compile-bytecode", "-q", "x==1"]) == 0
    assert calls[0][-3:] == ["--compile-bytecode", "-q", "x==1"] and calls[0][0] == "/bin/uv"
    assert calls[1] == ["/env/bin/python", "-m", "pip", "install", "-q", "x==1"]  # pip compiles on its own


def test_the_environment_is_the_locked_one():
    """Every package constraints.txt pins is installed at the version it pins (`make venv` installs with it)."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "constraints.txt").read_text()
    pins = dict(line.split("==", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert {"torch", "transformers", "polars"} <= set(pins) and pins["torch"].endswith("+cpu")
    for name, pinned in pins.items():
        try:
            assert version(name) == pinned, f"{name} {version(name)} installed, {pinned} pinned (make venv / make lock)"
        except PackageNotFoundError:
            raise AssertionError(f"{name} is pinned but not installed (make venv)") from None
