"""The README's "Geo strategies in your own DDP script" runs as written under torchrun (3 CPU ranks, 2 regions).

Its checkpoint line writes each rank's strategy state, which ``torch.load(weights_only=True)`` reads.

The script ends in ``os._exit(0)``: a plain 3-rank gloo DDP script under torchrun, without
delibench, died with "terminate called without an active exception" (SIGABRT) at interpreter exit
in 2 of 12 runs here (PyTorch 2.14, CPU), after all its work was done.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme_snippets import readme_python_block

pytestmark = pytest.mark.slow

SECTION = "### Geo strategies in your own DDP script"

PREAMBLE = """
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
loss_fn = torch.nn.functional.cross_entropy
_g = torch.Generator().manual_seed(int(__import__("os").environ["RANK"]))
loader = [(torch.randn(4, 8, generator=_g), torch.randint(0, 2, (4,), generator=_g)) for _ in range(7)]
"""

EPILOGUE = """
import os, sys
vec = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
every = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
dist.all_gather(every, vec)
assert all(torch.equal(v, vec) for v in every), "ranks differ after finish()"
saved = torch.load(f"ckpt-rank{dist.get_rank()}.pt", weights_only=True)["opt"]  # the README's checkpoint
assert saved["strategy"] == type(opt).__name__ and saved["version"] == 1, sorted(saved)
if dist.get_rank() == 0:
    print("identical on", dist.get_world_size(), "ranks; bytes across regions", comm.ledger.cross_region_bytes)
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # PyTorch 2.14: a gloo DDP script under torchrun aborts at interpreter exit now and then
"""


@pytest.mark.parametrize("variant", ["diloco", "asgd-ga"])
def test_readme_geo_script_runs_under_torchrun(tmp_path: Path, variant: str) -> None:
    script = readme_python_block(SECTION)
    regions = '["us-east"] * 4 + ["eu-west"] * 2'
    assert script.count(regions) == 1, "the README script no longer names its regions this way"
    script = script.replace(regions, '["us-east"] * 2 + ["eu-west"]')  # 3 ranks on a small machine
    if variant == "asgd-ga":
        lines = script.splitlines()
        asgd = [i for i, line in enumerate(lines) if line.startswith("# opt = AsyncGradientAccumulation(")]
        assert len(asgd) == 1
        lines.insert(asgd[0] + 1, lines[asgd[0]][2:])  # the commented alternative, switched on
        script = "\n".join(lines) + "\n"
    path = tmp_path / "train.py"
    path.write_text(PREAMBLE + script + EPILOGUE)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "identical on 3 ranks" in out.stdout
