# The README's two commands are `make demo` and `make test`; everything else here serves them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DURATION ?= 60
PYTEST_ARGS ?=
PROMTOOL ?= promtool

.PHONY: install kafka-jars proto proto-check lint unit integration test demo bench clean \
	prometheus-tools promtool

install: $(STAMP)

# The detector's C extension is compiled by the install: a change to its source installs again.
$(STAMP): pyproject.toml setup.py src/txguard/fraud/_per_record.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "txguard needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Apache Kafka broker jars from Maven Central, cached under ~/.cache/txguard (needs Java 17+ and Maven).
kafka-jars: install
	$(BIN)/txguard kafka fetch

proto: install
	$(BIN)/python -m txguard.schema.codegen

proto-check: install
	$(BIN)/python -m txguard.schema.codegen --check

lint: install proto-check
	$(BIN)/ruff check src tests setup.py
	$(BIN)/ruff format --check src tests setup.py
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# promtool ships in Debian's prometheus package; installed only when missing (as root, or via sudo).
prometheus-tools:
	@command -v $(PROMTOOL) >/dev/null 2>&1 && exit 0; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "promtool not found: install Prometheus 2.x (it includes promtool) and put promtool on PATH" >&2; exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "promtool not found: as root run 'apt-get install prometheus' (Debian's package provides promtool)" >&2; exit 1; fi; \
	echo "installing Debian's prometheus package for promtool ..."; \
	{ $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
		{ echo "installing Debian's prometheus package failed (see apt-get's message above)" >&2; exit 1; }; \
	command -v $(PROMTOOL) >/dev/null 2>&1 || { echo "promtool is still not on PATH after installing prometheus" >&2; exit 1; }

# Scrape configs (local and compose) and alert rules are valid, and every alert's unit tests pass.
promtool: prometheus-tools
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) check config deploy/prometheus/prometheus-compose.yml
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml
	$(PROMTOOL) test rules deploy/prometheus/alerts_test.yml

test: lint promtool kafka-jars
	$(BIN)/pytest tests $(PYTEST_ARGS)

# Every benchmark scenario at full size; results in benchmarks/results/ (about 15 minutes).
bench: install kafka-jars
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/txguard bench --readme README.md

demo: install kafka-jars
	$(BIN)/txguard demo --duration $(DEMO_DURATION)

clean:
	-$(BIN)/txguard kafka down
	rm -rf $(VENV) .venv-quix .txguard .mypy_cache .pytest_cache .ruff_cache
	rm -f src/txguard/*/*.so
