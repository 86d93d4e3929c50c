# Set-up in two commands: `make demo` and `make test`. Override TORCH to pick another build,
# e.g. `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu121"`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/manytask: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/manytask

demo: install
	$(BIN)/manytask run demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)  # runs/ holds trained models: delete it by hand
