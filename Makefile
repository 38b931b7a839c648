# Two entry points: `make demo` and `make test`. Both build the same virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[test,data]"
	touch $(STAMP)

# Fetch SmolLM2-135M-Instruct, fine-tune it with LoRA on the bundled data, answer the test set.
demo: venv
	$(BIN)/sft fetch-model smollm2-135m-instruct
	$(BIN)/sft fit --config configs/demo.yaml
	$(BIN)/sft predict --config configs/demo.yaml --ckpt_path last
	@echo "TensorBoard: $(BIN)/tensorboard --logdir runs/demo"

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) runs
