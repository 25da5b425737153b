# EasyFaaS — the two commands on a fresh machine (as root): `make run` and `make test`.
# `make setup` (which both call) is idempotent: it installs missing Debian packages, then the
# engine into .venv (Debian's python3, so sandboxes and the engine share one interpreter).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the engine and its tests need on a plain host; the image and VM tiers need more.
APT_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libsystemd-dev nodejs \
	iproute2 util-linux procps curl wrk
IMAGE_APT_PACKAGES := mmdebstrap squashfs-tools dosfstools mtools fdisk cpio gzip kmod systemd \
	git qemu-system-x86 qemu-utils ovmf
# Installs the Debian packages named in $(1) that are missing.
apt_install = missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
PYTEST_ARGS ?=

# Everything the appliance image is made from: a change to any of it rebuilds the image.
IMAGE := build/image/disk.raw
IMAGE_INPUTS := $(shell find image rootfs-overlay units engine runtimes -type f \
	-not -path '*/__pycache__/*' -not -path '*/.mypy_cache/*' 2>/dev/null) pyproject.toml

.PHONY: bench setup setup-image run test test-unit test-integration test-vm lint image image-check vm clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(call apt_install,$(APT_PACKAGES))
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@
	@echo "setup: done; the CLI is $(VENV)/bin/easyfaas"

run: setup
	$(VENV)/bin/easyfaas up

test: setup lint
	$(PY) -m pytest tests $(PYTEST_ARGS)
	$(MAKE) test-vm

test-unit: setup
	$(PY) -m pytest tests -m "not root and not vm" $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest tests -m root $(PYTEST_ARGS)

# Measures the engine next to its baselines in one run (see docs/performance.md);
# BENCH_ARGS=--quick for a run of under a minute.
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

# The VM tier boots the appliance under QEMU (TCG here: KVM does not work on these machines).
test-vm: setup-image $(IMAGE)
	$(PY) -m pytest vm-tests -m vm $(PYTEST_ARGS)

image: $(IMAGE)

$(IMAGE): $(VENV)/.installed $(IMAGE_INPUTS)
	@$(call apt_install,$(IMAGE_APT_PACKAGES))
	/usr/bin/python3 image/build.py

setup-image: setup
	@$(call apt_install,$(IMAGE_APT_PACKAGES))

# Builds twice from the same inputs and compares the outputs byte for byte.
image-check: setup-image
	sh image/check-reproducible.sh

# Boots disk.raw under UEFI with the trigger on 127.0.0.1:8080 and the API on 127.0.0.1:8001.
vm: setup-image $(IMAGE)
	sh image/qemu.sh

lint: setup
	$(VENV)/bin/ruff check engine tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
