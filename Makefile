# multiip: `sudo make demo` and `sudo make test` do everything on a fresh Debian host.
PYTHON ?= python3
DEBS = iproute2 bridge-utils isc-dhcp-client udhcpc dhcpcd-base dnsmasq-base shellcheck util-linux procps
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: deps install lint test demo bench golden clean

deps:  ## the Debian packages the tool, the lab and the tests call
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

install:  ## the package, editable, with its test tools
	$(PYTHON) -m pip install -q -e '.[dev]'

lint:
	$(PYTHON) -m ruff check multiip tests benchmarks
	$(PYTHON) -m ruff format --check multiip
	$(PYTHON) -m mypy

test: deps install lint  ## everything; as root the lab tests run too (CI requires them)
	$(PYTHON) -m pytest -rs tests

demo: deps install  ## lab up, a setup inside it, the status table, connections, teardown
	$(PYTHON) -m multiip demo

bench: deps install
	$(PYTHON) benchmarks/run.py

golden:  ## rewrite tests/golden after a reviewed template change
	UPDATE_GOLDEN=1 $(PYTHON) -m pytest -q tests/test_render.py

clean:
	rm -rf dist build *.egg-info .mypy_cache .ruff_cache .pytest_cache
