# Two commands do all the set-up on a fresh machine (only Python 3.11 needed):
#   make run    — the main job on the embedded default (generated sample, local Prefect
#                 server on 127.0.0.1, DirectRunner; data under data/, the working run
#                 under runs/, the published model under published/ with published/latest.json)
#   make test   — the test suite (unit, integration, e2e)
# Both create .venv from requirements.lock if it is missing or out of date.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv lint lock bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" setuptools wheel
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,cloud,tune]'
	@touch $(STAMP)

run: venv
	$(BIN)/python -m flows.local_run $(ARGS)

test: venv
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/python -m ruff check .

# Re-resolve the pinned environment (after changing dependencies in pyproject.toml).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	.venv-lock/bin/python -m pip install --quiet -e '.[dev,cloud,tune]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock
	rm -rf .venv-lock

bench: venv
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
