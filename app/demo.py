"""The whole story on one machine: an embedded bucket behind an emulated WAN link, four loaders, one table.

``delibench demo`` calls :func:`run_demo`; so can a notebook. Nothing needs a cloud account: the
testbed starts SeaweedFS (a real S3 server) on loopback behind the link emulator, a synthetic
ImageNet-like JPEG dataset is generated and pushed there, and disk, raw bucket, DELI and
fsspec-cache loaders are measured on the same emulated accelerator, epochs interleaved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from delibench.records import ComputeSpec, LoaderSpec, RunRecord, StepSample

__all__ = ["DemoOptions", "DemoResult", "run_demo"]

#: The demo's bucket and prefix inside the embedded S3 server.
DEMO_BUCKET = "delibench-demo"


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs; the defaults finish in a few minutes on a 2-core machine.

    Attributes:
        workdir: Data, testbed state, results and report go here.
        profile: Link profile between the "GPU VM" and the bucket.
        samples: Images in the synthetic dataset (ImageNet-like sizes, ~110 KB mean).
        epochs: Epochs per loader (epoch 2 shows what the caches keep).
        batch_size: Samples per batch.
        step_time_s: Emulated accelerator time per batch.
        num_workers: DataLoader workers for every loader.
        loaders: Loader specs (``disk`` reads the local copy).
        workload: Workload whose decode/augment pipeline is used.
    """

    workdir: Path = Path(".delibench/demo")
    profile: str = "cross-region"
    samples: int = 640
    epochs: int = 2
    batch_size: int = 32
    step_time_s: float = 0.5
    num_workers: int = 2
    loaders: tuple[str, ...] = ("disk", "bucket", "deli", "fsspec-cache")
    workload: str = "resnet50"
    seed: int = 0


@dataclass
class DemoResult:
    """The records of the run and where things were written."""

    records: list[RunRecord]
    results_dir: Path
    report_path: Path | None = None
    dataset_url: str = ""
    notes: list[str] = field(default_factory=list)


def _loader_spec(kind: str, data_dir: Path) -> LoaderSpec:
    if kind == "disk":
        return LoaderSpec("disk", {"path": str(data_dir)})
    if kind == "deli":
        return LoaderSpec("deli", {"cache_size": "1GiB", "prefetch_depth": 256, "concurrency": 32})
    return LoaderSpec(kind)


def run_demo(
    options: DemoOptions = DemoOptions(),
    *,
    log: Callable[[str], None] = print,
    on_step: Callable[[str, StepSample], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    html: bool = True,
) -> DemoResult:
    """Start the testbed, make and push the dataset, compare the loaders, write results and report.

    Everything the demo starts is stopped before it returns, also on error or Ctrl-C.

    Args:
        options: What to run.
        log: Receives one line per stage.
        on_step: Progress callback (loader name, step).
        should_stop: Polled between steps (Ctrl-C handling).
        html: Write the HTML report.
    """
    from delibench.app.lab import Lab
    from delibench.app.session import compare

    workdir = options.workdir.resolve()
    data_dir = workdir / "data"
    results_dir = workdir / "results"
    log(f"starting the embedded S3 server behind the '{options.profile}' link profile")
    # NOTE: detached (the default) runs the link emulator in its own process, so its CPU work does
    # not contend for the GIL of the process being measured.
    with Lab.start(workdir, profile=options.profile, services=("s3",)) as lab:
        try:
            data = lab.dataset(data_dir, f"s3://{DEMO_BUCKET}/imgs", samples=options.samples, seed=options.seed, log=log)
            route = lab.route("s3")
            specs = [
                route.spec(
                    data.url,
                    workload=options.workload,
                    loader=_loader_spec(kind, data_dir),
                    compute=ComputeSpec("emulated", options.step_time_s),
                    batch_size=options.batch_size,
                    num_workers=options.num_workers,
                    epochs=options.epochs,
                    warmup_steps=3,
                    seed=options.seed,
                )
                for kind in options.loaders
            ]
            log(
                f"measuring {', '.join(options.loaders)} on {len(data.manifest)} samples x {options.epochs} epochs "
                f"(emulated accelerator: {options.step_time_s * 1000:.0f} ms per batch of {options.batch_size})"
            )
            records = compare(specs, results_dir=str(results_dir), on_step=on_step, should_stop=should_stop, with_diagnosis=True)
        finally:
            log("stopping the testbed")
    result = DemoResult(records=records, results_dir=results_dir, dataset_url=data.url)
    if html:
        from delibench.reports.build import build_report

        result.report_path = workdir / "report.html"
        build_report(records, html=result.report_path, title="delibench demo")
    return result
