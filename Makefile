# Everything a fresh machine needs: Python 3.10+ and the package registries.
#   make demo   # set up .venv, then run the embedded ToyWorld default end to end (CPU, a few minutes)
#   make test   # set up .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The tests run the benchmark scorers' reference path with NLTK's tagger and WordNet from ../shared when it is
# there (CI always has it); a NLTK_DATA of your own wins. Users install the same data with NLTK's downloader.
SHARED_NLTK := $(wildcard $(abspath ..)/shared/nltk_data)
ifeq ($(origin NLTK_DATA),undefined)
ifneq ($(SHARED_NLTK),)
export NLTK_DATA := $(SHARED_NLTK)
endif
endif

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build first: a bare `torch` requirement would pull several GB of CUDA wheels.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/align demo

test: setup
	$(PY) -m pytest -q
	# Triton kernels on the CPU: the interpreter must be on before triton compiles anything, hence a 2nd process
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton tests/kernels

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check align data_builders rewards kernels tests bench

bench: setup   # about 2.5 hours on 2 CPU cores: base policies, OPA-DPO (+ baseline, ablation), DPO vs DDPO vs RLAIF-V, full demos
	$(PY) bench/demo.py --base-only
	$(PY) bench/opa_dpo.py
	$(PY) bench/rlhf_v.py
	$(PY) bench/demo.py
	$(PY) bench/attention.py   # GPU: ours vs SDPA flash vs flex; CPU: the interpreter correctness sweep (1 min)

clean:
	rm -rf $(VENV) runs .pytest_cache
