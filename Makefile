# `make demo` and `make test` work on a fresh clone: each creates .venv if
# missing and installs what it needs (pip skips what is already there).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo demo-primitives lint test test-slow bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e '.[anns,train,diffusion,bench,dev,ray]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# the main job: train the default tokenizer on the embedded images (runs/demo/)
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/vqlib fit --config configs/tokenizer/demo.yaml

demo-primitives: $(STAMP)
	$(PY) benchmarks/bench_primitives.py --demo

lint: $(STAMP)
	$(VENV)/bin/ruff check vqlib tests benchmarks

test: lint
	$(PY) -m pytest -n 2 -q

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_primitives.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache
