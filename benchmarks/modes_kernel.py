"""Each mode in the test kernel (user-mode Linux 6.1, tests/kernel.py: one CPU, a kernel that runs as a
process): `run` and `down` of 300 static setups, and the host's gap, as benchmarks/modes.py measures them
on this machine's kernel. Its figures compare modes with each other on that kernel, not with this machine's
(one CPU, and every fork and system call costs more there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kernel  # tests/kernel.py
from common import save

HERE = Path(__file__).parent


def main() -> dict[str, Any]:
    with kernel.booted(mem="4G") as box:
        which = box.kernel.name
        cp = box.run([kernel.python(), str(HERE / "modes.py"), "300"], cwd=str(HERE.parent), timeout=3600,
                     env={"PYTHONPATH": str(HERE.parent / "tests")})  # fmt: skip
    if cp.returncode != 0:
        raise SystemExit(f"modes in the test kernel failed:\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    out["where"] = f"the test kernel: user-mode Linux, one CPU ({which})"
    save("modes-test-kernel", out)
    return out


if __name__ == "__main__":
    main()
