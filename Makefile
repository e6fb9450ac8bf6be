# The quick start: `make run` serves Chute, `make test` runs the tests.
# Each target builds the virtualenv from the pins in pyproject.toml first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,redis,postgres]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/chute serve

# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff format --check chute tests bench
	$(BIN)/ruff check chute tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q
	node --test tests/js/

bench: $(STAMP)
	$(BIN)/python bench/upload_bench.py

clean:
	rm -rf $(VENV)
