# Two commands do all the set-up on a fresh machine:
#   make demo    installs what it needs, then runs the best end-to-end path
#   make test    installs what it needs, then runs the test suite
# Others: make check (lint + types + tests), make protocol, make bench.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test check lint protocol bench mosquitto socat chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m tools.ml.install_llm
	@touch $@

# Mosquitto is a Debian package: install it when running as root, otherwise
# say in one line what to run. Tests that need it skip outside CI and fail in CI.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	else \
		echo "mosquitto is missing: run 'sudo apt-get update && sudo apt-get install -y mosquitto mosquitto-clients'"; \
	fi

# socat turns the MicroPython unix port into a virtual board that
# `aiot firmware flash` reaches over socket:// (tools/firmware/virtual.py).
socat:
	@if command -v socat >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing socat with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null; \
	else \
		echo "socat is missing: run 'sudo apt-get update && sudo apt-get install -y socat'"; \
	fi

# Debian's chromium for the browser tests (tests/browser: playwright drives it
# with executable_path; it never downloads a browser of its own).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing: run 'sudo apt-get update && sudo apt-get install -y chromium'"; \
	fi

demo: $(STAMP) mosquitto socat
	$(VENV)/bin/aiot demo

test: $(STAMP) mosquitto socat chromium
	$(PY) -m pytest

# mypy strict on hub/, tools/, protocol/; then edge/ and firmware/ against the
# MicroPython stubs (ESP32, then Pico W), which it installs once into the venv.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m tools.firmware.typecheck

check: lint test

# Regenerate protocol/generated/ and protocol/vectors/ from protocol/aiot.fbs.
protocol: $(STAMP)
	$(PY) -m protocol.gen
	$(PY) -m protocol.golden

bench: $(STAMP) mosquitto
	$(VENV)/bin/aiot bench codec --json
	$(VENV)/bin/aiot bench edge --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
