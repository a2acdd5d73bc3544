# Each target sets itself up: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DB ?= demo.db

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	$(BIN)/logagg ingest --db $(DEMO_DB) samples/events.jsonl samples/resend.jsonl
	$(BIN)/logagg ingest --db $(DEMO_DB) --rejects demo-rejects.jsonl samples/bad.jsonl
	$(BIN)/logagg ingest --db $(DEMO_DB) samples/events.jsonl
	$(BIN)/logagg stats --db $(DEMO_DB) --format table
	$(BIN)/logagg events --db $(DEMO_DB) --topic user.login --limit 5 --format table
	$(BIN)/logagg check --db $(DEMO_DB)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check logagg tests bench
	$(BIN)/ruff format --check logagg tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo.db* demo-rejects.jsonl
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
