# Two entry points: `make demo` and `make test`. Both build the same virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[test,data,trackers]"
	touch $(STAMP)

# Fetch SmolLM2-135M-Instruct, fine-tune it with LoRA on the bundled data, score base and tuned on
# the test set, answer it, and print the comparison.
demo: venv
	$(BIN)/sft fetch-model smollm2-135m-instruct
	$(BIN)/sft demo --config configs/demo.yaml --references data/bundled/test.jsonl

# The suite in TEST_WORKERS parallel processes, then the tests that start several ranks or kill a
# process, alone (timed kills and gloo ranks need the cores to themselves), then the numerical tests
# once more on AVX2 kernels where this CPU has more (tests/other_cpu.py).
TEST_WORKERS ?= 2
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) -m "not processes" --durations=15
	$(BIN)/python -m pytest -q -p no:cacheprovider -m processes --durations=5
	$(BIN)/python -m tests.other_cpu

clean:
	rm -rf $(VENV) runs
