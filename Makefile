# Each target sets itself up: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DB ?= demo.db
# make bench compares ingest with the code before commit order, retention and conflicts
BENCH_AGAINST ?= b8e61de
DEMO_REJECTS ?= demo-rejects.jsonl

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench clean postgres-server shipper-daemon sqlite3-shell

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The story of the samples in a few lines: duplicates dropped, bad lines rejected with a
# reason, a re-run that adds nothing, a query, and counters that agree with the rows.
demo: $(STAMP)
	@rm -f $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
	@echo "samples/: $$(grep -c . samples/events.jsonl) events, $$(grep -c . samples/resend.jsonl) lines re-sending some of them (as a retry does), and $$(grep -c . samples/bad.jsonl) lines, some broken."
	@echo "1. Ingest the events and the re-sends: every re-sent copy is dropped as a duplicate; one that came back changed is also counted as a conflict (the stored copy stays)."
	@$(BIN)/logagg ingest --db $(DEMO_DB) samples/events.jsonl samples/resend.jsonl
	@echo "2. Ingest the broken file: each bad line is rejected with its reason (all kept in $(DEMO_REJECTS)); the good ones are stored."
	@$(BIN)/logagg ingest --db $(DEMO_DB) --rejects $(DEMO_REJECTS) samples/bad.jsonl
	@echo "3. Ingest the events again, as a re-run would: nothing new is stored."
	@$(BIN)/logagg ingest --db $(DEMO_DB) samples/events.jsonl
	@echo "4. Ask the store: the newest logins (logagg events --topic user.login --limit 3)."
	@$(BIN)/logagg events --db $(DEMO_DB) --topic user.login --limit 3 --format table
	@echo "5. Check it: the counters agree with the stored rows (logagg check)."
	@$(BIN)/logagg check --db $(DEMO_DB)
	@echo "Next: $(BIN)/logagg stats --db $(DEMO_DB), or $(BIN)/logagg events --db $(DEMO_DB) --since 2025-01-01T10:20Z"

# The tests start a throwaway PostgreSQL server of their own: install one if missing.
postgres-server:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing the PostgreSQL server for the tests"; \
	  if command -v apt-get >/dev/null; then $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  elif command -v dnf >/dev/null; then $(SUDO) dnf install -y -q postgresql-server; \
	  elif command -v apk >/dev/null; then $(SUDO) apk add -q postgresql; \
	  elif command -v brew >/dev/null; then brew install -q postgresql; \
	  else echo "install the PostgreSQL server (initdb, pg_ctl)" >&2; exit 1; fi; }

# ... and a real log shipper: rsyslog with its Elasticsearch output (omelasticsearch).
shipper-daemon:
	@{ command -v rsyslogd || test -x /usr/sbin/rsyslogd; } >/dev/null && \
	  ls /usr/lib/rsyslog/omelasticsearch.so /usr/lib/*/rsyslog/omelasticsearch.so \
	     /usr/lib64/rsyslog/omelasticsearch.so 2>/dev/null | grep -q . || { \
	  echo "installing rsyslog and its Elasticsearch output for the tests"; \
	  if command -v apt-get >/dev/null; then $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsyslog rsyslog-elasticsearch; \
	  elif command -v dnf >/dev/null; then $(SUDO) dnf install -y -q rsyslog rsyslog-elasticsearch; \
	  elif command -v apk >/dev/null; then $(SUDO) apk add -q rsyslog rsyslog-elasticsearch; \
	  else echo "install rsyslog with its Elasticsearch output (omelasticsearch)" >&2; exit 1; fi; }

# Four workers: many tests wait on real processes, so they overlap well even on two cores.
test: $(STAMP) postgres-server shipper-daemon
	$(BIN)/python -m pytest -n 4

lint: $(STAMP)
	$(BIN)/ruff check logagg tests bench
	$(BIN)/ruff format --check logagg tests bench
	$(BIN)/mypy --strict logagg

# The benchmark's C reference: the sqlite3 command-line shell.
sqlite3-shell:
	@command -v sqlite3 >/dev/null || { \
	  echo "installing the sqlite3 command-line shell for the benchmark"; \
	  if command -v apt-get >/dev/null; then $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3; \
	  elif command -v dnf >/dev/null; then $(SUDO) dnf install -y -q sqlite; \
	  elif command -v apk >/dev/null; then $(SUDO) apk add -q sqlite; \
	  elif command -v brew >/dev/null; then brew install -q sqlite; \
	  else echo "install the sqlite3 command-line shell" >&2; exit 1; fi; }

# Sizes: BENCH_SIZES (default "1000000 5000000"); the 20M run is opt-in:
#   make bench BENCH_SIZES="1000000 5000000 20000000"
bench: $(STAMP) postgres-server sqlite3-shell
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	# byte-compiled, as an installed package is (start-up is measured)
	$(BIN)/python -m compileall -q logagg
	$(BIN)/python bench/run.py
	{ printf '# PostgreSQL benchmark results\n\nReproduce: `make bench`.\n\n'; \
	  $(BIN)/python bench/pg_bench.py; } > bench/RESULTS-postgres.md.new
	mv bench/RESULTS-postgres.md.new bench/RESULTS-postgres.md
	cat bench/RESULTS-postgres.md
	# ingest with conflict detection against the code before it; follow latency
	$(BIN)/python bench/compare.py --against $(BENCH_AGAINST) --rounds 5
	$(BIN)/python bench/compare.py --against $(BENCH_AGAINST) --rounds 3 --conflicts 0.2
	$(BIN)/python bench/follow_latency.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo.db* demo-rejects.jsonl
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
