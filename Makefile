# cxrkit: `make demo` sets everything up and runs the pipeline on built-in phantom X-rays;
# `make test` sets everything up and runs the whole test suite. Both are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cxrkit-installed
DEMO   := demo

.PHONY: setup demo test lint format typecheck bench bench-real browser clean

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
	$(BIN)/cxrkit explain $(DEMO)/runs/cnn4 test --limit 8
	$(BIN)/cxrkit localize $(DEMO)/runs/cnn4
	$(BIN)/cxrkit evaluate $(DEMO)/runs/cnn4 --split test
	$(BIN)/cxrkit export $(DEMO)/runs/cnn4 --format onnx
	@echo ""
	@echo "demo: statistics in $(DEMO)/stats, the model in $(DEMO)/runs/cnn4 (+ best.onnx),"
	@echo "      its evaluation report (with explanations and localisation) in"
	@echo "      $(DEMO)/runs/cnn4/eval/test/report.html"
	@echo "predict:  $(BIN)/cxrkit predict $(DEMO)/runs/cnn4 $(DEMO)/nih/images_001/images --out predictions.csv"
	@echo "serve:    $(BIN)/cxrkit serve $(DEMO)/runs/cnn4    # then open http://127.0.0.1:8000/"
	@echo "Research use only; not a medical device."

test: setup browser
	$(BIN)/python -m pytest -q -n 2 --durations=10

# tests/test_lint.py runs the same checks inside `make test` (rules: pyproject's [tool.ruff])
lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# Lay the code out the one way `make lint` and the tests expect
format: setup
	$(BIN)/ruff format src tests bench

# tests/test_typecheck.py runs the same check inside `make test` (pyproject's [tool.mypy])
typecheck: setup
	$(BIN)/python -m mypy

# The web page's browser test drives Debian's headless Chromium; install it where missing
# (needs root or passwordless sudo; otherwise that one test is skipped and says why).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  ( $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	      $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1; } ) || \
	  echo "could not install chromium: the browser test will be skipped"; }

bench: setup
	$(BIN)/python bench/bench_cache.py
	$(BIN)/python bench/bench_loader.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_predict.py --startup

# ~20-25 min on 2 CPU cores: default vs naive recipe trained and evaluated on real images
bench-real: setup
	$(BIN)/python bench/bench_real_sample.py

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache
