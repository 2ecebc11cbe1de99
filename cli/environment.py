"""The one place below which nothing reads the process environment: it turns it into data.

The CLI reads its flags and environment here (testbed endpoints exported by ``delibench testbed
env``, torchrun's rank variables, the link profile label) and passes plain values down: storage
options in the run spec, a :class:`~delibench.distributed.RankInfo`. Credentials stay with the cloud
clients' own chains (botocore, google-auth), which read them themselves.
"""

from __future__ import annotations

import os
from typing import Any

from delibench.distributed import RankInfo, rank_info
from delibench.errors import SpecError, UsageError
from delibench.storage import protocol_of, storage_options_from_env

__all__ = ["FLAG_FOR_FIELD", "as_flag_error", "launched_as_rank", "link_profile", "profiles_path", "rank", "storage_options_for"]

#: Spec field -> the flag that sets it, so a spec's own validation error reads as a CLI error.
FLAG_FOR_FIELD = {
    "dataset_url": "--data",
    "workload": "--workload",
    "batch_size": "--batch-size",
    "num_workers": "--num-workers",
    "epochs": "--epochs",
    "warmup_steps": "--warmup-steps",
    "warmup_epochs": "--warmup-epochs",
    "seed": "--seed",
    "max_steps_per_epoch": "--max-steps",
    "step_time_s": "--compute",
    "kind": "--compute",
    "objective": "--objective",
    "min_au": "--min-au",
    "steps_per_trial": "--steps-per-trial",
    "epochs_per_trial": "--epochs-per-trial",
}


def storage_options_for(url: str) -> dict[str, Any]:
    """Storage options for ``url`` from this process's environment (endpoints only)."""
    return storage_options_from_env(protocol_of(url), os.environ)


def link_profile() -> str | None:
    """The link profile the testbed exported (``DELIBENCH_LINK_PROFILE``), to label results."""
    return os.environ.get("DELIBENCH_LINK_PROFILE") or None


def rank() -> RankInfo:
    """This process's place in a torchrun (or ``--nproc``) job, with its node: ``LOCAL_WORLD_SIZE``,
    ``GROUP_RANK`` and a job id from the rendezvous address and torchrun's run id."""
    import dataclasses

    env = os.environ
    info = rank_info(env)
    if "RANK" not in env:
        return info
    job = f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}:{env.get('TORCHELASTIC_RUN_ID', '')}"
    return dataclasses.replace(info, local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)), node_rank=int(env.get("GROUP_RANK", 0)), job_id=job)


def profiles_path() -> str | None:
    """An extra GPU-profiles file named by ``DELIBENCH_PROFILES`` (read after the user's own file)."""
    return os.environ.get("DELIBENCH_PROFILES") or None


def launched_as_rank() -> bool:
    """True inside a rank that torchrun or ``--nproc`` started (it must not launch ranks itself)."""
    return "RANK" in os.environ


def as_flag_error(exc: SpecError) -> UsageError:
    """A spec's field error worded with the flag that set the field (unchanged when none did)."""
    flag = FLAG_FOR_FIELD.get(exc.field)
    return exc.for_flag(flag) if flag else exc
