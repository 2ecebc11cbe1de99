"""``--nproc N``: start N ranks of this command on this machine with torchrun's environment variables.

It lives in the CLI because it is the CLI re-running itself: each rank is ``python -m delibench
<the same arguments>`` with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` set, exactly what
``torchrun --nproc-per-node N -m delibench ...`` gives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from delibench.app.session import FAILURE_REPORT_TIMEOUT_S
from delibench.errors import ExitCode

__all__ = ["AFTER_RANK_0_GRACE_S", "RANK_GRACE_S", "launch_local"]


#: Seconds the other ranks get to finish after a rank exited non-zero (not by a signal) before they are
#: killed: longer than rank 0 may wait for the failed ranks' reports, so it can still write the record.
RANK_GRACE_S = FAILURE_REPORT_TIMEOUT_S + 15.0
#: Seconds the other ranks get once rank 0 exited with a runtime error (1): it has written whatever
#: record there is, so they only finish their own clean-up (a complete run's 3 or 4 keeps
#: :data:`RANK_GRACE_S`: those ranks are closing loaders, DataLoader workers and cache directories) (a rank that hung, e.g. after ``--collective-timeout``, never
#: would, and waiting :data:`RANK_GRACE_S` for it would only delay the exit).
AFTER_RANK_0_GRACE_S = 10.0


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
    If a rank is killed, the others would wait for it in a collective until gloo's 30-minute timeout, so
    they (and their DataLoader workers) are killed at once and the failing rank's code is returned; a
    rank that exits with an error leaves the others :data:`RANK_GRACE_S` (rank 0 records the failed run),
    or :data:`AFTER_RANK_0_GRACE_S` once rank 0 itself has failed (exit 1).

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
    rank_0_failed_at: float | None = None
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
            if codes[0] == int(ExitCode.RUNTIME_ERROR) and rank_0_failed_at is None:
                rank_0_failed_at = time.perf_counter()
            # NOTE: rank 0 also exits non-zero after a complete run (3 invalid, 4 threshold): the
            # others are then past the last collective and get a grace period to finish. So does a
            # rank that failed and said why (exit 1: the session sent its steps to rank 0 first):
            # its exit releases the ranks blocked with it, and rank 0 then writes the record.
            # Only a rank ended by a signal stops the others at once.
            # Once rank 0 has left, no record is waiting on the others: a short grace for their clean-up.
            crashed = failed and failed[0][1] < 0
            now = time.perf_counter()
            graced = (failed_at is not None and now - failed_at > RANK_GRACE_S) or (
                rank_0_failed_at is not None and now - rank_0_failed_at > AFTER_RANK_0_GRACE_S)
            if failed and not forwarded and (crashed or graced):
                rank, code = failed[0]
                sys.stderr.write(f"delibench: rank {rank} exited with code {code}; stopping the other ranks\n")
                if codes[0] is None and not crashed:  # rank 0 outlived the grace: hung itself, no record from it
                    sys.stderr.write(f"delibench: rank 0 had not ended {RANK_GRACE_S:g} s later (hung?): no record was written\n")
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
