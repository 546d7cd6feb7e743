# make demo | make test | make bench | make docs -- each builds .venv first if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench docs model clean venv device-wheels

venv: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c .ci/constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wfe sample demo-output/sample.tiff --seed 7
	$(BIN)/wfe run workflows/demo.yaml -i demo-output/sample.tiff -o demo-output/results
	@echo
	@echo "Results are in demo-output/results/sample/ (labels.ome.zarr, overlay.png); report.html (open it in a browser), run.json and wfe.log are in demo-output/results/."

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

# Wheels for a GPU machine that lacks some of wfe's packages (docs/benchmarks.md, On a GPU).
device-wheels: $(STAMP)
	$(BIN)/python -m tests.benchmarks.device_wheels

docs: $(STAMP)
	$(BIN)/python -m wfe.docs docs/reference

# Retrain the shipped demo model (about 25 minutes on 2 CPU cores: 1,471 s the last time).
model: $(STAMP)
	$(BIN)/python -m wfe_builtin.models.train_demo workflows/models/demo

clean:
	rm -rf demo-output .pytest_cache
