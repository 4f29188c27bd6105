# The two commands a user needs: `make train` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default: it needs no GPU and downloads nothing large. GPU users:
#   make install TORCH=torch          (PyPI's default Linux build of torch is the CUDA one)
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install train test lint bench gpu-check soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: install
	$(VENV)/bin/mhaexp-train $(ARGS)

# Two test workers (pytest-xdist) on the 2-core reference machine: most tests wait on a subprocess's
# single-threaded start-up (imports, Hydra, Lightning), which a second worker overlaps. TEST_JOBS=0: serial.
TEST_JOBS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup --durations=20 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests experiments
	$(VENV)/bin/ruff format --check src tests experiments
	$(VENV)/bin/lint-imports

# Not part of `make test`: N runs of the default model, each SIGKILLed at a random moment and resumed, must end
# bit-identical to an uninterrupted run (mhaexp.tools.soak; about N x 2 short runs).
N ?= 10
soak: install
	$(PY) -m mhaexp.tools.soak --n $(N) --out soak_out/$$(date +%Y%m%d-%H%M%S) $(ARGS)

bench: install
	$(PY) -m mhaexp.tools.bench $(ARGS)

gpu-check: install
	$(PY) -m mhaexp.tools.bench.gpu_check $(ARGS)

clean:
	rm -rf runs multirun outputs wandb studies .pytest_cache .ruff_cache bench_out soak_out
	find . -name __pycache__ -prune -exec rm -rf {} +
