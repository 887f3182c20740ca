# make demo  — create .venv if needed, run the embedded demo, write ./morphllr-demo/
# make test  — create .venv if needed, run the whole test suite (make test-fast skips the slow tests)
# make models — retrain the two shipped demo ensembles (3 seeds each) from scratch (~35 min on 2 cores)
# make bench — speed tables quoted in BENCHMARKS.md
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench models clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/morphllr demo --out morphllr-demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/fused_kernels.py
	$(BIN)/python benchmarks/score_memory.py
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/compare.py

models: $(STAMP)
	$(BIN)/python scripts/make_models.py

clean:
	rm -rf $(VENV) morphllr-demo
