"""keep_freed_host_memory: freed blocks are reused instead of coming back as fresh, faulted-in pages."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from urbansound.host_memory import ALLOCATOR_VARIABLES

# Four 24 MB blocks allocated and freed together, ten times: with glibc's defaults each round maps (or grows
# the heap by) fresh pages, which the kernel faults in; with the memory kept, the rounds reuse the first's.
_CHURN = """
import resource, sys
import numpy as np
from urbansound.host_memory import keep_freed_host_memory
applied = keep_freed_host_memory() if sys.argv[1] == "keep" else None
def churn():
    blocks = [np.ones(3 * 2**20) for _ in range(4)]
    del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**environment, **env},
    )
    applied, faults = result.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc; a no-op elsewhere")
def test_kept_memory_is_reused_without_page_faults() -> None:
    _, default_faults = _page_faults("default")
    applied, kept_faults = _page_faults("keep")
    assert applied == "True"
    assert default_faults > 10_000  # 10 rounds x 96 MB of fresh 4 kB pages, most of them faulted
    assert kept_faults < default_faults / 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc; a no-op elsewhere")
def test_an_allocator_the_user_chose_is_left_alone() -> None:
    applied, faults = _page_faults("keep", GLIBC_TUNABLES="glibc.malloc.check=0")
    assert applied == "False"
    assert faults > 10_000
