"""torch.distributed plumbing for runs: this process's place in the job, process-group setup, gathers.

The ranks are started by torchrun, or by ``delibench run --nproc N`` (``delibench.cli.launch``), which
gives each the same variables torchrun does, so one code path serves both.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RankInfo", "all_gather_objects", "current_rank_info", "init_from_env", "rank_info", "shutdown"]


@dataclass(frozen=True, slots=True)
class RankInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: Ranks on this node (torchrun's ``LOCAL_WORLD_SIZE``), this node's number (``GROUP_RANK``) and a
    #: string the job's ranks share and no other job has (names deli's node service); data the CLI reads.
    local_world_size: int = 1
    node_rank: int = 0
    job_id: str = ""

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes results and talks to the user."""
        return self.rank == 0


def rank_info(environ: Mapping[str, str]) -> RankInfo:
    """Rank and world size from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) in ``environ``.

    The CLI passes ``os.environ``; library code gets its :class:`RankInfo` handed in, or asks the
    process group (:func:`current_rank_info`).
    """
    return RankInfo(
        rank=int(environ.get("RANK", 0)),
        world_size=int(environ.get("WORLD_SIZE", 1)),
        local_rank=int(environ.get("LOCAL_RANK", 0)),
    )


def current_rank_info() -> RankInfo:
    """This process's place from an initialised ``torch.distributed`` process group (else one rank).

    For a Python user whose script set up the process group (``torchrun`` + ``init_process_group``)
    before calling the session; the local rank comes from torch's own lookup.
    """
    import sys

    dist = sys.modules.get("torch.distributed")  # NOTE: not imported here when the user never did
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return RankInfo()
    rank = dist.get_rank()
    return RankInfo(rank=rank, world_size=dist.get_world_size(), local_rank=dist.get_node_local_rank(fallback_rank=rank))


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
