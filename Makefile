# EasyFaaS — the two commands on a fresh machine (as root): `make run` and `make test`.
# `make setup` (which both call) is idempotent: it installs missing Debian packages, then the
# engine into .venv (Debian's python3, so sandboxes and the engine share one interpreter).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the engine and its tests need on a plain host.
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev nodejs \
	iproute2 util-linux procps curl
PYTEST_ARGS ?=

.PHONY: setup run test test-unit test-integration lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@
	@echo "setup: done; the CLI is $(VENV)/bin/easyfaas"

run: setup
	$(VENV)/bin/easyfaas up

test: setup lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests -m "not root and not vm" $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest tests -m root $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check engine tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
