"""torch.distributed plumbing for runs: rank discovery (torchrun env), process-group setup, gathers, launch.

``delibench run --nproc N`` starts N copies of itself with torchrun's environment variables, so the
same code path serves ``torchrun --nproc-per-node N -m delibench run ...``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from delibench.errors import ExitCode

__all__ = ["RankInfo", "all_gather_objects", "current_rank_info", "init_from_env", "launch_local", "rank_info", "shutdown"]


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


#: Seconds the other ranks get to finish after rank 0 exited non-zero before they are killed.
RANK_GRACE_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a rank and everything in its process group (its DataLoader workers)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def launch_local(nproc: int, argv: list[str], timeout_s: float | None = None) -> int:
    """Run ``python -m delibench <argv>`` as ``nproc`` ranks on this machine; returns rank 0's exit code.

    Rank 0 inherits stdout/stderr; the other ranks' stdout is discarded (they write no results) and
    their stderr is kept for errors.

    Each rank runs in its own process group, so a terminal's Ctrl-C reaches only this launcher,
    which forwards SIGINT/SIGTERM to every rank exactly once per signal: the ranks then stop after
    their step in flight and rank 0 saves the partial results (a second Ctrl-C stops them at once).
    If a rank fails, the others would wait for it in a collective until gloo's 30-minute timeout, so
    they (and their DataLoader workers) are killed at once and the failing rank's code is returned.

    Args:
        nproc: Ranks to start.
        argv: The command line of each rank (without ``--nproc``).
        timeout_s: Kill every rank after this long and return 124 (None: no limit).
    """
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    base_env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nproc))
    base_env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    forwarded: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        forwarded.append(signum)
        # A closed terminal (SIGHUP) ends the ranks as SIGTERM does: they save what they measured.
        sent = signal.SIGTERM if signum == signal.SIGHUP else signum
        for p in procs:
            if p.poll() is None:
                p.send_signal(sent)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    # Python 3.10 has no process_group argument; setpgrp in the child does the same.
    own_group: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    start = time.perf_counter()
    failed_at: float | None = None
    try:
        for rank in range(nproc):
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "delibench", *argv],
                    env=env,
                    stdout=None if rank == 0 else subprocess.DEVNULL,
                    **own_group,
                )
            )
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            failed = [(rank, c) for rank, c in enumerate(codes) if c not in (None, 0)]
            if failed and failed_at is None:
                failed_at = time.perf_counter()
            # NOTE: rank 0 also exits non-zero after a complete run (3 invalid, 4 threshold): the
            # others are then past the last collective and get a grace period to finish.
            crashed = failed and (failed[0][0] != 0 or failed[0][1] < 0)
            if failed and not forwarded and (crashed or time.perf_counter() - failed_at > RANK_GRACE_S):
                rank, code = failed[0]
                sys.stderr.write(f"delibench: rank {rank} exited with code {code}; stopping the other ranks\n")
                for p in procs:
                    _kill_group(p)
                return code if code > 0 else 1
            if timeout_s is not None and time.perf_counter() - start > timeout_s:
                sys.stderr.write(f"delibench: ranks still running after {timeout_s:g} s; stopping them\n")
                for p in procs:
                    _kill_group(p)
                return 124
            time.sleep(0.1)
    finally:
        for p in procs:
            _kill_group(p)
        for s, h in previous.items():
            signal.signal(s, h)
    codes_done = [int(p.returncode) for p in procs]
    if forwarded:
        return codes_done[0] if codes_done[0] != 0 else int(ExitCode.INTERRUPTED)
    if codes_done[0] != 0:
        return codes_done[0]
    return next((c if c > 0 else 1 for c in codes_done if c != 0), 0)
