"""The NVML sampler reports nothing unless the run is on CUDA and NVML answers (never a guess)."""

from __future__ import annotations

from delibench.distributed import RankInfo
from delibench.records import ComputeSpec, LoaderSpec, RunSpec, StepSample
from delibench.app.session import GpuUtilizationSampler


def _spec(kind: str) -> RunSpec:
    return RunSpec(dataset_url="/x", workload="resnet50", loader=LoaderSpec("deli"), compute=ComputeSpec(kind=kind, step_time_s=0.1 if kind == "emulated" else None))


def _steps(sampler: GpuUtilizationSampler, n: int) -> None:
    for i in range(n):
        sampler.on_step(StepSample(epoch=0, step=i, rank=0, wait_s=0.0, compute_s=0.1, samples=1))


def test_not_on_cuda_samples_nothing() -> None:
    sampler = GpuUtilizationSampler(_spec("emulated"), RankInfo())
    _steps(sampler, 20)
    assert sampler.device is None and sampler.mean() is None


def test_without_a_gpu_it_gives_up_and_reports_none() -> None:
    import torch

    sampler = GpuUtilizationSampler(_spec("cuda"), RankInfo())
    _steps(sampler, 20)
    if torch.cuda.is_available():
        assert sampler.mean() is not None and 0.0 <= sampler.mean() <= 1.0
    else:
        assert sampler.mean() is None and sampler.device is None
