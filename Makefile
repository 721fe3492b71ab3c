# cxrkit: `make demo` sets everything up and runs the pipeline on built-in phantom X-rays;
# `make test` sets everything up and runs the whole test suite. Both are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cxrkit-installed
DEMO   := demo

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is installed first, pinned through constraints.txt, so that nothing resolves a
# newer (CUDA) torch; then cxrkit itself in editable mode with its dev extras.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/cxrkit phantoms $(DEMO)/nih --patients 1000 --size 128 --seed 0
	$(BIN)/cxrkit prepare $(DEMO)/nih --out $(DEMO)/prepared --size 128 --val-fraction 0.2
	$(BIN)/cxrkit stats $(DEMO)/prepared --out $(DEMO)/stats
	$(BIN)/cxrkit train configs/demo.yaml
	@echo "demo: statistics in $(DEMO)/stats, the trained model in $(DEMO)/runs/cnn4"

test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=10

bench: setup
	$(BIN)/python bench/bench_cache.py
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(DEMO) .pytest_cache
