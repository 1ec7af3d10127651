# shield: set-up and checks. `make test` works on a fresh Debian machine with
# Python 3.11: it creates .venv, installs the project with its test extras and
# the Debian packages the tests need, then runs the whole suite.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the test-suite uses: the reference Go yamux for interop; ip and iptables for the
# network-namespace topology tests (tests/netns, run as root).
DEBIAN_TEST_PACKAGES := golang-go golang-github-hashicorp-yamux-dev iproute2 iptables
# ip and iptables live in /usr/sbin, which a user's PATH may lack.
SBIN_PATH := $(PATH):/usr/sbin:/sbin
YAMUX_GO_SRC := /usr/share/gocode/src/github.com/hashicorp/yamux

.PHONY: test venv debian-test-deps clean

venv: $(BIN)/.installed

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

debian-test-deps:
	@if ! command -v go >/dev/null || [ ! -d $(YAMUX_GO_SRC) ] || \
		! env PATH="$(SBIN_PATH)" sh -c 'command -v ip && command -v iptables' >/dev/null; then \
		echo "installing Debian packages: $(DEBIAN_TEST_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBIAN_TEST_PACKAGES); \
	fi

test: venv debian-test-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis demo-run

.PHONY: demo
# The real thing on 127.0.0.1: dev certificates, a DMZ gateway, a connector and an echo backend,
# in the foreground. Ctrl-C stops all three.
demo: venv
	$(BIN)/shield demo --dir demo-run

.PHONY: bench debian-bench-deps
# Benchmarks against `ssh -R` and the backend directly (not part of `make test`): results in
# benchmarks/results/ (JSON, Markdown table, PNG chart). `make bench QUICK=1` is a reduced run.
# See docs/performance.md.
DEBIAN_BENCH_PACKAGES := openssh-server openssh-client

debian-bench-deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then \
		echo "installing Debian packages: $(DEBIAN_BENCH_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBIAN_BENCH_PACKAGES); \
	fi

$(BIN)/.bench-installed: $(BIN)/.installed setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]' --config-settings editable_mode=compat
	touch $@

bench: venv debian-bench-deps $(BIN)/.bench-installed
	$(if $(filter-out 0,$(QUICK)),QUICK=1,QUICK=) $(BIN)/python -m benchmarks
