"""torch.distributed plumbing for runs: this process's place in the job, process-group setup, gathers.

The ranks are started by torchrun, or by ``delibench run --nproc N`` (``delibench.cli.launch``), which
gives each the same variables torchrun does, so one code path serves both.
"""

from __future__ import annotations

import datetime
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from delibench.errors import RuntimeFailure, UsageError

__all__ = [
    "DEFAULT_COLLECTIVE_TIMEOUT_S",
    "RankInfo",
    "abandon_group",
    "all_gather_objects",
    "check_collective_timeout",
    "current_rank_info",
    "init_from_env",
    "is_collective_timeout",
    "rank_info",
    "shutdown",
]

#: Seconds a rank waits in a collective for the others before the collective fails (the process
#: group's ``timeout``). NOTE: torch's own defaults are 30 minutes for gloo and 10 for NCCL; 10
#: minutes for both keeps NCCL's behaviour and bounds a hung gloo rank 3x sooner, while staying far
#: above anything a healthy rank spends between two collectives of a run (one step, one batch's
#: data wait, a loader's set-up before the first step).
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0

#: How gloo words a collective that ran out of time ("Timed out waiting 20000ms for recv operation to
#: complete"), and torch's NCCL watchdog ("Watchdog caught collective operation timeout"); a peer that
#: left reads "Connection closed by peer" instead. Narrow on purpose: a CUDA "launch timed out" or a
#: workload's own timeout raised inside a step is not another rank failing to join.
_TIMEOUT_WORDS = re.compile(r"Timed out waiting \d+ ?ms for (?:send|recv)|collective operation timeout", re.IGNORECASE)


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


def check_collective_timeout(seconds: float, *, name: str = "collective_timeout_s") -> float:
    """``seconds`` as a collective timeout: a positive, finite number (``name`` words the error).

    Raises:
        UsageError: Zero, negative, not a number or infinite (torch would take 0 as "fail at once").
    """
    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds > 0
    if not ok:
        raise UsageError(f"{name} must be a positive number of seconds, got {seconds!r}",
                         hint=f"e.g. {DEFAULT_COLLECTIVE_TIMEOUT_S:g} (the default); it bounds how long the ranks wait for a hung one")
    return float(seconds)


def init_from_env(info: RankInfo, *, collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> bool:
    """Join the process group when launched by torchrun or ``--nproc``; gloo on CPU, nccl on CUDA.

    Args:
        info: This process's place in the job.
        collective_timeout_s: The group's ``timeout``: a collective (DDP's all-reduce, the loop's
            stop vote) that a rank does not join within it fails on the ranks waiting in it (gloo
            raises a ``RuntimeError``; with NCCL torch's watchdog ends the process, as
            ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` says). A group the caller created keeps its own.

    Returns:
        True when a process group was created here (and must be destroyed by :func:`shutdown`).

    Raises:
        UsageError: ``collective_timeout_s`` is not a positive number of seconds.
    """
    timeout_s = check_collective_timeout(collective_timeout_s)
    if info.world_size <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        _check_not_abandoned()
        return False
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > info.local_rank else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def is_collective_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that ran out of time (gloo's ``RuntimeError``, torch's ``DistBackendError``).

    Only meaningful for an error raised by a collective (the caller knows where it came from): a
    storage read timing out reads alike.
    """
    return isinstance(exc, RuntimeError) and bool(_TIMEOUT_WORDS.search(str(exc)))


#: The default process group, once a run left it mid-collective (see :func:`abandon_group`).
_abandoned: list[Any] = []


def abandon_group() -> None:
    """Mark this process's default group unusable: a rank left it inside a collective (a failed step).

    It is neither destroyed (gloo may abort there, NCCL block) nor usable: its peers are gone or out of
    step. A later run in this process then fails at once with a clear error instead of on the dead group.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        _abandoned[:] = [dist.group.WORLD]


def _check_not_abandoned() -> None:
    import torch.distributed as dist

    if _abandoned and dist.is_initialized() and dist.group.WORLD is _abandoned[0]:
        raise RuntimeFailure("this process's process group was left inside a collective by a failed run: it cannot be used again",
                             hint="end the process and start the job again (torchrun restarts ranks with --max-restarts)")


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
