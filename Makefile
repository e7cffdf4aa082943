# multiip: `make demo` and `make test` do everything on a fresh Debian host, from a root shell or as a
# user who may sudo (what needs root asks sudo for it). The package and its tools go into a virtual
# environment (.venv): Debian's own Python refuses system-wide pip installs (PEP 668).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# user-mode-linux, kmod: the test kernel (tests/kernel.py) for what this machine's kernel may lack (ipvlan, 8021q)
# patchelf: the test kernel from Debian unstable where Debian 12's cannot run (tests/kernel.py fetch_sid)
DEBS = iproute2 bridge-utils isc-dhcp-client udhcpc dhcpcd-base dnsmasq-base shellcheck util-linux procps \
       network-manager dbus-daemon systemd nginx-light wrk nftables iputils-arping arp-scan python3 python3-venv \
       user-mode-linux kmod patchelf
# what `make bench` compares multiip with: CNI's bridge plugin, a C client (gcc)
BENCH_DEBS = containernetworking-plugins gcc libc6-dev
export PATH := $(PATH):/usr/sbin:/sbin
# Root for what changes namespaces and installs packages: nothing as root, sudo as anyone else.
ifeq ($(shell id -u),0)
AS_ROOT :=
else ifneq ($(shell command -v sudo),)
AS_ROOT := sudo PYTHONDONTWRITEBYTECODE=1
else
AS_ROOT = $(error run it as root, or install sudo: the lab and the packages need root)
endif

.PHONY: deps install lint test demo bench golden clean

deps:  ## the Debian packages the tool, the lab and the tests call
	@missing=""; for p in $(DEBS) $(EXTRA_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(AS_ROOT) apt-get update -q && \
	  $(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)  ## the package, editable, with its test tools, in $(VENV)
	$(PY) -m pip install -q -e '.[dev,locust]'

lint:
	$(PY) -m ruff check multiip tests benchmarks
	$(PY) -m ruff format --check multiip
	$(PY) -m mypy

test: deps install lint  ## everything, the lab tests as root (CI requires them)
	$(AS_ROOT) $(PY) -m pytest -rs -p no:cacheprovider tests

demo: deps install  ## a lab, a setup inside it, the status table, N x 64,512 connections, teardown
	$(AS_ROOT) $(PY) -m multiip demo

bench: EXTRA_DEBS = $(BENCH_DEBS)
bench: deps install  ## benchmarks/results/*.json (as root; several minutes)
	$(AS_ROOT) $(PY) benchmarks/run.py

golden:  ## rewrite tests/golden after a reviewed template change
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_render.py

clean:
	rm -rf $(VENV) dist build *.egg-info .mypy_cache .ruff_cache .pytest_cache
