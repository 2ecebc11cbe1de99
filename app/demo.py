"""The whole story on one machine: an embedded bucket behind an emulated WAN link, four loaders, one table.

``delibench demo`` calls :func:`run_demo`; so can a notebook. Nothing needs a cloud account: the
testbed starts SeaweedFS (a real S3 server) on loopback behind the link emulator, a synthetic
ImageNet-like JPEG dataset is generated and pushed there, and disk, raw bucket, DELI and
fsspec-cache loaders are measured on the same emulated accelerator, epochs interleaved.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from delibench.records import ComputeSpec, LoaderSpec, RunRecord, RunSpec, StepSample

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


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    from delibench.loaders.publish import push
    from delibench.manifest import MANIFEST_NAME
    from delibench.app.session import compare
    from delibench.testbed.testbed import Testbed
    from delibench.workloads.datagen import make_dataset

    workdir = options.workdir.resolve()
    data_dir = workdir / "data"
    results_dir = workdir / "results"
    log(f"starting the embedded S3 server behind the '{options.profile}' link profile")
    # NOTE: detached=True runs the link emulator in its own process, so its CPU work does not
    # contend for the GIL of the process being measured.
    tb = Testbed.start(workdir / "testbed", profile=options.profile, services=("s3",), detached=True)
    try:
        if not (data_dir / MANIFEST_NAME).exists():
            log(f"generating {options.samples} synthetic JPEG images in {data_dir}")
            make_dataset(data_dir, samples=options.samples, seed=options.seed)
        url = f"{tb.make_bucket(DEMO_BUCKET)}/imgs"
        direct = dict(tb.env, AWS_ENDPOINT_URL=tb.s3_direct_url or "")
        with _env(direct):
            log(f"uploading the dataset to {url} (direct, unshaped)")
            manifest = push(data_dir, url)
        with _env(dict(tb.env, DELIBENCH_LINK_PROFILE=options.profile)):
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            specs = [
                RunSpec(
                    dataset_url=url,
                    workload=options.workload,
                    loader=_loader_spec(kind, data_dir),
                    compute=ComputeSpec("emulated", options.step_time_s),
                    batch_size=options.batch_size,
                    num_workers=options.num_workers,
                    epochs=options.epochs,
                    warmup_steps=3,
                    seed=options.seed,
                    link_profile=options.profile,
                )
                for kind in options.loaders
            ]
            log(
                f"measuring {', '.join(options.loaders)} on {len(manifest)} samples x {options.epochs} epochs "
                f"(emulated accelerator: {options.step_time_s * 1000:.0f} ms per batch of {options.batch_size})"
            )
            records = compare(specs, results_dir=str(results_dir), on_step=on_step, should_stop=should_stop, with_diagnosis=True)
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        log("stopping the testbed")
        tb.stop()
    result = DemoResult(records=records, results_dir=results_dir, dataset_url=url)
    if html:
        from delibench.reports.build import build_report

        result.report_path = workdir / "report.html"
        build_report(records, html=result.report_path, title="delibench demo")
    return result
