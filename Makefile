# The README's two commands are `make demo` and `make test`; everything else here serves them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DURATION ?= 60
PYTEST_ARGS ?=

.PHONY: install kafka-jars proto proto-check lint unit integration test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
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
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint kafka-jars
	$(BIN)/pytest tests $(PYTEST_ARGS)

demo: install kafka-jars
	$(BIN)/txguard demo --duration $(DEMO_DURATION)

clean:
	-$(BIN)/txguard kafka down
	rm -rf $(VENV) .txguard .mypy_cache .pytest_cache .ruff_cache
