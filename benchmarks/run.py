"""`make bench`: every benchmark, each in one run, results in benchmarks/results/*.json. As root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parent.parent / "tests"))  # the tests' helpers and shared fixtures

import clients
import ipv6
import million
import modes
import modes_kernel
import peers
import scale

BENCHMARKS = {
    "scale": scale.main,
    "modes": modes.main,
    "modes-test-kernel": modes_kernel.main,
    "million": million.main,
    "two-million": million.two_million,  # not in a plain `make bench`: ~19 GB, both ends here
    "clients": clients.main,
    "ipv6": ipv6.main,
    "peers": peers.main,
}

if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench: run as root (the lab uses network namespaces)")
    names = sys.argv[1:] or [name for name in BENCHMARKS if name != "two-million"]
    for name in names:
        print(f"bench: {name}", file=sys.stderr)
        BENCHMARKS[name]()
