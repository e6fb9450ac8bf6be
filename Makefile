# The quick start: `make run` serves Chute, `make test` runs the tests.
# Each target builds the virtualenv from the pins in pyproject.toml first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check bench bench-tus clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,redis,postgres]'
	touch $(STAMP)

# The tus clients and servers the tests and benchmarks run against, as package-lock.json pins them.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The uploader package's examples, each with its own pins: TypeScript for the typed one
# (tests/js/declarations.test.mjs and tests/web use its tsc), React and Vite for the page.
EXAMPLE_STAMPS := examples/typescript/node_modules/.installed examples/react/node_modules/.installed
examples/%/node_modules/.installed: examples/%/package.json examples/%/package-lock.json
	cd examples/$* && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The OpenID Connect provider the identity tests run against, with its own pins
# (tests/auth/package-lock.json).
OIDC_STAMP := tests/auth/node_modules/.installed
$(OIDC_STAMP): tests/auth/package.json tests/auth/package-lock.json
	cd tests/auth && npm ci --no-audit --no-fund --loglevel=error
	touch $(OIDC_STAMP)

run: $(STAMP)
	$(BIN)/chute serve

# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

# Tests run in 4 processes on 2 cores: most of their time is spent waiting on servers,
# sleeps and timeouts. Each process takes a module's tests of one deployment at a time
# (tests/conftest.py: `work_unit`), so the module's server is started once.
test: $(STAMP) $(NODE_STAMP) $(EXAMPLE_STAMPS) $(OIDC_STAMP) $(CHROMIUM)
	$(BIN)/ruff format --check chute tests bench
	$(BIN)/ruff check chute tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n 4 --dist loadscope
	node --test tests/js/

bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/upload_bench.py

# Chute's tus endpoint against @tus/server and tuspyserver (bench/README.md).
bench-tus: $(STAMP) $(NODE_STAMP)
	$(BIN)/python bench/tus_bench.py

clean:
	rm -rf $(VENV)
