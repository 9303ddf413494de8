# Two commands do all the set-up on a fresh machine:
#   make demo    installs what it needs, then runs the best end-to-end path
#   make test    installs what it needs, then runs the test suite
# Others: make check (lint + types + tests), make protocol, make bench.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test check lint protocol bench mosquitto socat chromium systemd guide tcpdump fuse clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml or a model manifest changes.
$(STAMP): pyproject.toml $(wildcard models/*.json) | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The fine-tune tests' stack (aiot models finetune): torch==2.13.0, a CPU build here.
	$(PY) -m pip install --quiet -e '.[finetune]'
	$(PY) -m tools.ml.install_llm
	@touch $@

# Debian packages the tests and the demo need: installed with apt-get when
# run as root, otherwise one line says what to run. Tests that need one skip
# outside CI and fail in CI.
# $(call apt_need,COMMAND,PACKAGES): install PACKAGES unless COMMAND is found.
define apt_need
	@if command -v $(1) >/dev/null 2>&1 || [ -x /usr/sbin/$(1) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(2) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	else \
		echo "$(1) is missing: run 'sudo apt-get update && sudo apt-get install -y $(2)'"; \
	fi
endef

# Each hub node supervises its own Mosquitto.
mosquitto:
	$(call apt_need,mosquitto,mosquitto mosquitto-clients)

# socat turns the MicroPython unix port into a virtual board that
# `aiot firmware flash` reaches over socket:// (tools/firmware/virtual.py).
socat:
	$(call apt_need,socat,socat)

# Debian's chromium for the browser tests (tests/browser: playwright drives it
# with executable_path; it never downloads a browser of its own).
chromium:
	$(call apt_need,chromium,chromium)

demo: $(STAMP) mosquitto socat
	$(VENV)/bin/aiot demo

# systemd-analyze checks the units `aiot hub install-service` writes and the
# guide's timers (it needs no running systemd).
systemd:
	$(call apt_need,systemd-analyze,systemd)

# The Raspberry Pi guide's run on one machine (tests/docs/site.py): each Pi a
# network namespace (iproute2), sudo as on Raspberry Pi OS, curl as the guide uses it.
guide:
	$(call apt_need,ip,iproute2)
	$(call apt_need,sudo,sudo)
	$(call apt_need,curl,curl)

# tcpdump: tests/security/test_tls.py captures the wire on loopback.
tcpdump:
	$(call apt_need,tcpdump,tcpdump)

# fuse3 (fusermount3 and libfuse3, which mfusepy loads): the lazy file system
# of the power-cut tests and `aiot chaos --power-cuts` (tools/lab/lazyfs.py).
fuse:
	$(call apt_need,fusermount3,fuse3)

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file
# whole in one of them, so a file's module fixtures (clusters, models) start
# once, and the files that use every core run one after another
# (tests/conftest.py). 0 runs it in this process (docs/DEVELOPMENT.md).
TEST_WORKERS ?= 2
test: $(STAMP) mosquitto socat chromium systemd guide tcpdump fuse
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

# mypy strict on hub/, tools/, protocol/; the import contracts of the layers
# (docs/ARCHITECTURE.md); then edge/ and firmware/ against the MicroPython
# stubs (ESP32, then Pico W), which it installs once into the venv.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
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
