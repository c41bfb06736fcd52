# One command sets everything up on a fresh machine and runs the whole suite: `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test install lint typecheck run clean

$(BIN)/watcher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,embedded]'
	touch $(BIN)/watcher

install: $(BIN)/watcher

test: install
	$(BIN)/ruff check watcher checks tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest -q --durations=15

run: install
	$(BIN)/watcher run

lint: install
	$(BIN)/ruff check watcher checks tests bench examples

# mypy --strict on watcher/ and checks/ (settings in pyproject.toml)
typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .watcher .pytest_cache .mypy_cache
