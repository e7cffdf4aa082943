"""The test kernel: tests/test_second_kernel.py, run inside user-mode Linux (tests/kernel.py) in one boot.

There are the tests that need what this machine's kernel may lack (ipvlan, 8021q) and every mode once more on a
second kernel version; on this machine they are deselected (conftest.py), never skipped. Inside, they run as
the same pytest with the same lab and multiip, and must all pass: none may skip there either. On a host whose
CPU Debian 12's UML cannot run on (kernel.UMLHostUnsupported, its own console says so) the kernel is Debian
unstable's (kernel.booted)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import kernel

pytestmark = pytest.mark.root


def test_the_second_kernel_runs_every_test_that_needs_it() -> None:
    if (why := kernel.missing()) is not None:
        pytest.fail(f"the test kernel cannot run here: {why}")
    with kernel.booted(mem="4G") as box:
        cp = box.run(
            [kernel.python(), "-m", "pytest", "-rA", "-q", "-p", "no:cacheprovider", "tests/test_second_kernel.py"],
            env={
                "MULTIIP_IN_TEST_KERNEL": "1",
                "MULTIIP_REQUIRE_ROOT_TESTS": "1",
                "MULTIIP_TEST_KERNEL_RELEASE": box.release,
            },
            timeout=2400,
        )
        release = box.run(["uname", "-r"]).stdout.strip()
    print(f"--- in the test kernel (Linux {release}) ---\n{cp.stdout}\n{cp.stderr}")  # pytest -s shows it
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", cp.stdout, re.M)
    assert cp.returncode == 0, cp.stdout[-8000:] + cp.stderr[-2000:]
    assert outcomes and set(outcomes) == {"PASSED"}, cp.stdout[-8000:]
