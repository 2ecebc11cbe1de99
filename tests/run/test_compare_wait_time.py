"""compare's headline: the wait *time* removed per epoch (the DELI paper's figure), checked against hand arithmetic."""

from __future__ import annotations

import dataclasses

from tests.reports.conftest import build_record

from delibench.records import EpochMetrics, RunRecord
from delibench.reports.tables import summary_sentence, summary_table, to_markdown, wait_s_per_epoch, wait_time_reduction


def _with_epoch_waits(record: RunRecord, waits: list[float], *, compute_s: float = 10.0, warmup_epochs: int = 0) -> RunRecord:
    """``record`` with one rank-0 epoch per entry of ``waits`` (seconds waited in that epoch)."""
    epochs = tuple(EpochMetrics(i, 0, 30, 480, w + compute_s, w, compute_s, w / (w + compute_s), 480 / (w + compute_s)) for i, w in enumerate(waits))
    spec = dataclasses.replace(record.spec, warmup_epochs=warmup_epochs)
    return dataclasses.replace(record, spec=spec, metrics=dataclasses.replace(record.metrics, epochs=epochs, bottleneck_rank=0))


def test_wait_time_reduction_per_epoch_by_hand() -> None:
    bucket = _with_epoch_waits(build_record("bucket", wait_s=0.06, seed=1), [20.0, 16.0])  # 18 s per epoch
    deli = _with_epoch_waits(build_record("deli", wait_s=0.003, seed=2), [2.0, 0.16])  # 1.08 s per epoch
    assert wait_s_per_epoch(bucket) == 18.0
    assert abs(wait_s_per_epoch(deli) - 1.08) < 1e-12
    # 1 - 1.08 / 18 = 0.94
    assert abs(wait_time_reduction(deli, bucket) - 0.94) < 1e-12
    # a loader that waits longer than the baseline gets a negative figure: 1 - 27 / 18 = -0.5
    slow = _with_epoch_waits(build_record("deli", seed=4), [27.0, 27.0])
    assert abs(wait_time_reduction(slow, bucket) + 0.5) < 1e-12


def test_warmup_epochs_are_left_out_of_the_per_epoch_wait() -> None:
    deli = _with_epoch_waits(build_record("deli", seed=2), [9.0, 1.0, 3.0], warmup_epochs=1)
    assert wait_s_per_epoch(deli) == 2.0  # (1 + 3) / 2; the cold epoch 0 is a warm-up epoch


def test_headline_and_column_carry_the_wait_time_removed() -> None:
    bucket = _with_epoch_waits(build_record("bucket", wait_s=0.06, seed=1), [20.0, 16.0])
    deli = _with_epoch_waits(build_record("deli", wait_s=0.003, seed=2), [2.0, 0.16])
    text = summary_sentence([bucket, deli])
    assert text.startswith("deli waited 94.0% less time per epoch than bucket (1.1 s vs 18.0 s) and "), text
    ratio = bucket.metrics.data_wait_fraction / deli.metrics.data_wait_fraction
    assert f"for bucket: {ratio:.1f}x less data wait" in text  # the fraction ratio stays beside it
    table = summary_table([bucket, deli])
    assert [row["wait_time_reduction"] for row in table.rows][0] is None  # the baseline itself
    assert abs(table.rows[1]["wait_time_reduction"] - 0.94) < 1e-12
    assert abs(table.rows[1]["wait_s_per_epoch"] - 1.08) < 1e-12
    md = to_markdown(table)
    header = md.splitlines()[0]
    assert header.index("| data wait |") < header.index("| wait cut |")  # beside the fraction
    assert "| 94.0% |" in md


def test_headline_says_more_when_the_best_waited_longer_per_epoch() -> None:
    # Fractions and seconds can disagree when epochs differ in length: say so, never a negative "less".
    bucket = _with_epoch_waits(build_record("bucket", wait_s=0.06, seed=1), [10.0, 10.0])
    deli = _with_epoch_waits(build_record("deli", wait_s=0.003, seed=2), [12.0, 12.0])
    assert "waited 20.0% MORE time per epoch than bucket" in summary_sentence([bucket, deli])
