"""Test helper: several Python processes (standing for several VMs) started together on one study."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_together"]


def run_together(scripts: Sequence[Sequence[str]], *, cwd: Path, timeout_s: float) -> list[str]:
    """Run ``python *args`` for every entry of ``scripts`` at once and wait for all of them.

    Each process's stdout and stderr are read together; any process still running when this returns
    (a timeout, an error) is killed. Fails the test, with that process's output, when one exits non-zero.

    Returns:
        Each process's output, in the order of ``scripts``.
    """
    procs = [
        subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for args in scripts
    ]
    try:
        outputs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output
    return outputs
