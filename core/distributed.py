"""torch.distributed plumbing for runs: rank discovery (torchrun env), process-group setup, gathers, launch.

``delibench run --nproc N`` starts N copies of itself with torchrun's environment variables, so the
same code path serves ``torchrun --nproc-per-node N -m delibench run ...``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["RankInfo", "all_gather_objects", "init_from_env", "launch_local", "rank_info", "shutdown"]


@dataclass(frozen=True, slots=True)
class RankInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes results and talks to the user."""
        return self.rank == 0


def rank_info() -> RankInfo:
    """Rank and world size from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return RankInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_from_env(info: RankInfo) -> bool:
    """Join the process group when launched by torchrun or ``--nproc``; gloo on CPU, nccl on CUDA.

    Returns:
        True when a process group was created here (and must be destroyed by :func:`shutdown`).
    """
    if info.world_size <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > info.local_rank else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    return True


def shutdown(created: bool) -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    if created:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_gather_objects(obj: Any, info: RankInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one object when not distributed)."""
    if info.world_size <= 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(nproc: int, argv: list[str], timeout_s: float | None = None) -> int:
    """Run ``python -m delibench <argv>`` as ``nproc`` ranks on this machine; returns rank 0's exit code.

    Rank 0 inherits stdout/stderr; the other ranks' stdout is discarded (they write no results) and
    their stderr is kept for errors. Every rank is terminated if any fails or on Ctrl-C.
    """
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    base_env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nproc))
    base_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        for rank in range(nproc):
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "delibench", *argv],
                    env=env,
                    stdout=None if rank == 0 else subprocess.DEVNULL,
                )
            )
        codes = [p.wait(timeout=timeout_s) for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(2)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        return procs[0].returncode if procs and procs[0].returncode is not None else 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes[0] if codes[0] != 0 else max(codes, key=abs)
