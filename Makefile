# shield: set-up and checks. `make test` works on a fresh Debian machine with
# Python 3.11: it creates .venv, installs the project with its test extras and
# the Debian packages the tests need, then runs the whole suite.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the test-suite uses: the reference Go yamux for interop; ip and iptables for the
# network-namespace topology tests (tests/netns, run as root); sshd and ssh for the benchmark
# harness's self-check (tests/bench: ssh -R is the benchmarks' baseline); tinyproxy, a real HTTP
# CONNECT proxy for the connector's egress through a proxy (tests/e2e/test_egress_proxy.py);
# haproxy, a real load balancer that sends the PROXY protocol to the DMZ and a real server that
# reads it from the connector (tests/e2e/test_proxy_protocol*.py).
DEBIAN_TEST_PACKAGES := golang-go golang-github-hashicorp-yamux-dev iproute2 iptables openssh-server openssh-client tinyproxy haproxy
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
		! env PATH="$(SBIN_PATH)" sh -c 'command -v ip && command -v iptables' >/dev/null || \
		[ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null || \
		! command -v tinyproxy >/dev/null || [ ! -x /usr/sbin/haproxy ]; then \
		echo "installing Debian packages: $(DEBIAN_TEST_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBIAN_TEST_PACKAGES); \
	fi

test: venv debian-test-deps lint
	$(BIN)/python -m pytest

.PHONY: lint
# Types (mypy, settings in setup.cfg: strict for shield/mux and shield/link) and a small ruff rule set.
lint: venv
	$(BIN)/mypy
	$(BIN)/ruff check shield tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis demo-run

.PHONY: demo
# The real thing on 127.0.0.1: dev certificates, a DMZ gateway, a connector and an echo backend,
# in the foreground. Ctrl-C stops all three.
demo: venv
	$(BIN)/shield demo --dir demo-run

.PHONY: bench debian-bench-deps
# Benchmarks against `ssh -R` and the backend directly (not part of `make test`, which only runs
# the harness's tiny self-check, tests/bench): results in benchmarks/results/ (JSON, Markdown
# table, PNG chart). `make bench QUICK=1` is a reduced run. See docs/performance.md.
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

.PHONY: fuzz
# Coverage-guided fuzzing (atheris + libFuzzer, installed by the test extra) of the yamux frame
# parser, the shield-link messages (OPEN/OPEN_REPLY, ANNOUNCE/ANNOUNCE_REPLY) and the PROXY
# protocol header reader, FUZZ_SECONDS each: `make fuzz FUZZ_SECONDS=600`. The corpus grows in build/fuzz/NAME/corpus from seeds the
# harnesses write; a crash leaves build/fuzz/NAME/crash-*, replayed by `python fuzz/fuzz_NAME.py
# FILE`. `make test` runs each harness briefly (tests/fuzz). See docs/protocol.md, "Fuzzing".
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES := frames open_header proxy_header
FUZZ_DIR := build/fuzz

fuzz: venv
	@for name in $(FUZZ_HARNESSES); do \
		dir=$(FUZZ_DIR)/$$name; \
		$(BIN)/python fuzz/fuzz_$$name.py --make-seeds $$dir/corpus || exit 1; \
		echo "== fuzz/fuzz_$$name.py for $(FUZZ_SECONDS) s (full log: $$dir/fuzz.log)"; \
		$(BIN)/python fuzz/fuzz_$$name.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			-artifact_prefix=$$dir/ $$dir/corpus >$$dir/fuzz.log 2>&1; \
		status=$$?; \
		grep -e '^#.*\(INITED\|DONE\)' -e '^stat::' -e '^Done' -e 'Uncaught' -e '^Traceback' \
			-e 'Error' -e '^  File' -e 'crash-' $$dir/fuzz.log; \
		[ $$status -eq 0 ] || { echo "fuzz_$$name.py failed (exit $$status): see $$dir/fuzz.log"; exit $$status; }; \
	done
