# multiip: `sudo make demo` and `sudo make test` do everything on a fresh Debian host.
# The package and its tools go into a virtual environment (.venv): Debian's own Python refuses
# system-wide pip installs (PEP 668).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBS = iproute2 bridge-utils isc-dhcp-client udhcpc dhcpcd-base dnsmasq-base shellcheck util-linux procps \
       network-manager dbus-daemon nginx-light wrk nftables iputils-arping python3 python3-venv
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: deps install lint test demo bench golden clean

deps:  ## the Debian packages the tool, the lab and the tests call
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)  ## the package, editable, with its test tools, in $(VENV)
	$(PY) -m pip install -q -e '.[dev,locust]'

lint:
	$(PY) -m ruff check multiip tests benchmarks
	$(PY) -m ruff format --check multiip
	$(PY) -m mypy

test: deps install lint  ## everything; as root the lab tests run too (CI requires them)
	$(PY) -m pytest -rs tests

demo: deps install  ## a lab, a setup inside it, the status table, N x 64,512 connections, teardown
	$(PY) -m multiip demo

bench: deps install  ## benchmarks/results/*.json (as root; several minutes)
	$(PY) benchmarks/run.py

golden:  ## rewrite tests/golden after a reviewed template change
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_render.py

clean:
	rm -rf $(VENV) dist build *.egg-info .mypy_cache .ruff_cache .pytest_cache
