"""Stopping a run through the API (what Ctrl-C and the tuner's pruning use): partial records, or a clean 130."""

from __future__ import annotations

import pytest

from delibench.errors import DelibenchError, ExitCode
from delibench.records import ComputeSpec, LoaderSpec, RunSpec

pytestmark = pytest.mark.timeout(120)


def _spec(url: str, loader: LoaderSpec) -> RunSpec:
    return RunSpec(
        dataset_url=url, workload="mnist-cnn", loader=loader, compute=ComputeSpec("emulated", 0.005),
        batch_size=16, num_workers=0, epochs=2, warmup_steps=1,
    )


def test_stopped_before_the_first_step_is_exit_130_and_writes_nothing(mnist_dir, tmp_path):
    from delibench.app.session import run

    with pytest.raises(DelibenchError) as info:
        run(_spec(str(mnist_dir), LoaderSpec("bucket")), results_dir=str(tmp_path), should_stop=lambda: True, price=False)
    assert info.value.exit_code == ExitCode.INTERRUPTED
    assert "before its first step" in info.value.message
    assert not list(tmp_path.iterdir())


def test_compare_stopped_mid_way_keeps_the_loaders_that_ran(mnist_dir, tmp_path):
    from delibench.app.session import compare

    steps: list[str] = []
    specs = [_spec(str(mnist_dir), LoaderSpec("bucket")), _spec(str(mnist_dir), LoaderSpec("memory"))]
    records = compare(
        specs, results_dir=str(tmp_path), price=False,
        on_step=lambda name, _s: steps.append(name),
        should_stop=lambda: len(steps) >= 5,  # during the first loader's first epoch
    )
    assert [r.spec.loader.kind for r in records] == ["bucket"]
    (record,) = records
    assert record.status == "interrupted" and not record.valid
    assert record.metrics.total_samples == 5 * 16
    assert len(list(tmp_path.glob("*.json"))) == 1
