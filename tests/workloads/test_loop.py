"""The measured loop: exact splits with a fake clock, proportions with real sleeps, early stops."""

from __future__ import annotations

import time

import pytest

from delibench.loaders.base import Batch
from delibench.measure import check_validity
from delibench.records import LoaderStats
from delibench.workloads.compute import EmulatedCompute
from delibench.workloads.loop import measure_loader, probe_decode_rate


class FakeClock:
    """A clock that only moves when told to: timings become exact and nothing sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedLoader:
    """Yields ``steps`` batches per epoch; each ``next()`` costs ``wait_s`` (on a fake clock or by sleeping)."""

    name = "scripted"

    def __init__(self, *, steps, batch_size=4, wait_s=0.0, setup_s=0.0, first_wait_s=None, advance=time.sleep):
        self.steps = steps
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.setup_s = setup_s
        self.first_wait_s = first_wait_s
        self.advance = advance
        self.open_iterators = 0
        self.epochs_started = []

    def iter_epoch(self, epoch):
        self.epochs_started.append(epoch)
        self.advance(self.setup_s)  # eager setup, as a loader that starts its workers in iter_epoch
        return self._gen(epoch)

    def _gen(self, epoch):
        self.open_iterators += 1
        try:
            for i in range(self.steps):
                self.advance(self.first_wait_s if (i == 0 and self.first_wait_s is not None) else self.wait_s)
                base = epoch * self.steps * self.batch_size + i * self.batch_size
                idx = list(range(base, base + self.batch_size))
                yield Batch(inputs=None, labels=idx, indices=idx)
        finally:
            self.open_iterators -= 1

    def stats(self):
        return LoaderStats(requests_count=len(self.epochs_started))

    def close(self):
        pass


class FakeCompute:
    kind = "fake"

    def __init__(self, clock, step_s, h2d_s=0.0):
        self.clock, self.step_s, self.h2d_s = clock, step_s, h2d_s
        self.steps = 0

    def to_device(self, batch):
        self.clock.advance(self.h2d_s)  # the blocking part of a copy counts as wait
        return batch

    def step(self, batch):
        self.steps += 1
        self.clock.advance(self.step_s)

    def sync(self):
        pass


def test_fake_clock_gives_exact_wait_compute_and_setup_split():
    clock = FakeClock()
    loader = ScriptedLoader(steps=5, wait_s=0.2, setup_s=1.0, first_wait_s=3.0, advance=clock.advance)
    compute = FakeCompute(clock, step_s=0.6, h2d_s=0.05)
    result = measure_loader(loader, compute, epochs=2, clock=clock)
    assert result.stopped is None and len(result.steps) == 10
    assert result.iterator_setup_s == pytest.approx(1.0)
    assert result.time_to_first_batch_s == pytest.approx(3.05)
    first, second = result.steps[0], result.steps[1]
    assert first.wait_s == pytest.approx(3.05) and first.start_s == pytest.approx(1.0)
    assert second.wait_s == pytest.approx(0.25) and second.compute_s == pytest.approx(0.6)
    assert second.start_s == pytest.approx(first.start_s + 3.05 + 0.6)
    # Epoch 2's setup is wait the accelerator sees: it goes into that epoch's first step.
    e1 = result.steps[5]
    assert (e1.epoch, e1.step) == (1, 0) and e1.wait_s == pytest.approx(1.0 + 3.05)
    assert [t.iterator_setup_s for t in result.epochs] == pytest.approx([1.0, 1.0])
    assert all(t.complete for t in result.epochs) and [t.samples for t in result.epochs] == [20, 20]
    # Σ (wait + compute) covers the loop after the first setup, with no gap and no overlap.
    total = sum(s.wait_s + s.compute_s for s in result.steps)
    assert total == pytest.approx(result.wall_s - result.iterator_setup_s)
    m = result.summarize(warmup_steps=1)
    steady_wait = 4 * 0.25 + (1.0 + 3.05) + 4 * 0.25
    assert m.data_wait_fraction == pytest.approx(steady_wait / (steady_wait + 9 * 0.6))
    assert m.ranks[0].loader_stats.requests_count == 2


def test_callback_time_is_excluded_and_reported():
    clock = FakeClock()
    loader = ScriptedLoader(steps=4, wait_s=0.1, advance=clock.advance)
    seen = []

    def on_step(sample):
        seen.append(sample)
        clock.advance(0.5)  # a slow progress bar

    result = measure_loader(loader, FakeCompute(clock, 0.3), epochs=1, on_step=on_step, clock=clock)
    assert [s.step for s in seen] == [0, 1, 2, 3]
    assert all(s.wait_s == pytest.approx(0.1) for s in result.steps)
    assert result.callback_s == pytest.approx(2.0)


def test_real_sleeps_split_in_the_right_proportion():
    # Data 30 ms per batch, compute 10 ms: the loop must report about 75 % wait.
    loader = ScriptedLoader(steps=12, wait_s=0.030)
    result = measure_loader(loader, EmulatedCompute(0.010), epochs=1)
    m = result.summarize(warmup_steps=2)
    assert m.measured_steps == 10
    assert 0.55 < m.data_wait_fraction < 0.85
    assert all(s.wait_s >= 0.030 and s.compute_s >= 0.005 for s in result.steps[2:])
    # The reverse: compute-bound.
    fast = measure_loader(ScriptedLoader(steps=12, wait_s=0.002), EmulatedCompute(0.030), epochs=1)
    assert fast.summarize(warmup_steps=2).data_wait_fraction < 0.3


def test_should_stop_ends_early_with_a_consistent_result_and_closes_the_iterator():
    clock = FakeClock()
    loader = ScriptedLoader(steps=10, wait_s=0.1, advance=clock.advance)
    compute = FakeCompute(clock, 0.1)
    result = measure_loader(loader, compute, epochs=3, should_stop=lambda: compute.steps >= 7, clock=clock)
    assert result.stopped == "should_stop"
    assert len(result.steps) == 7 == compute.steps
    assert [t.epoch for t in result.epochs] == [0] and result.epochs[0].complete is False
    assert loader.open_iterators == 0  # the generator was closed: its finally ran
    # The partial epoch is not a partial read when the stop was asked for, but the run says so.
    m = result.summarize(warmup_steps=1)
    codes = {i.code for i in check_validity(m, expected_samples_per_epoch=40, stopped_early=True)}
    assert codes == {"stopped-early"}
    # The loader is still usable afterwards.
    again = measure_loader(loader, FakeCompute(clock, 0.1), epochs=1, start_epoch=1, clock=clock)
    assert len(again.steps) == 10 and again.steps[0].epoch == 1


def test_ctrl_c_keeps_the_steps_measured_so_far():
    clock = FakeClock()
    loader = ScriptedLoader(steps=10, wait_s=0.1, advance=clock.advance)

    class Interrupting(FakeCompute):
        def step(self, batch):
            if self.steps == 4:
                raise KeyboardInterrupt
            super().step(batch)

    result = measure_loader(loader, Interrupting(clock, 0.2), epochs=2, clock=clock)
    assert result.stopped == "interrupted"
    assert len(result.steps) == 4  # the step in flight is dropped
    assert loader.open_iterators == 0


def test_max_steps_per_epoch_slices_each_epoch():
    clock = FakeClock()
    loader = ScriptedLoader(steps=10, wait_s=0.1, advance=clock.advance)
    result = measure_loader(loader, FakeCompute(clock, 0.1), epochs=3, max_steps_per_epoch=4, clock=clock)
    assert [t.steps for t in result.epochs] == [4, 4, 4]
    assert not any(t.complete for t in result.epochs)
    assert loader.open_iterators == 0 and loader.epochs_started == [0, 1, 2]
    m = result.summarize(warmup_steps=1)
    assert check_validity(m, expected_samples_per_epoch=40, max_steps_per_epoch=4, batch_size=4) == []


def test_an_exception_in_the_loader_propagates_and_closes_the_iterator():
    class Broken(ScriptedLoader):
        def _gen(self, epoch):
            self.open_iterators += 1
            try:
                yield Batch(None, [0], [0])
                raise RuntimeError("storage fell over")
            finally:
                self.open_iterators -= 1

    loader = Broken(steps=3, advance=lambda s: None)
    with pytest.raises(RuntimeError, match="fell over"):
        measure_loader(loader, EmulatedCompute(0.0), epochs=1)
    assert loader.open_iterators == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        measure_loader(ScriptedLoader(steps=1), EmulatedCompute(0.0), epochs=0)
    with pytest.raises(ValueError):
        measure_loader(ScriptedLoader(steps=1), EmulatedCompute(0.0), epochs=1, max_steps_per_epoch=0)


def test_probe_decode_rate_counts_samples_on_a_fake_clock():
    clock = FakeClock()

    def decode(data, label):
        clock.advance(0.01 * len(data) / 100)
        return data, label

    items = [(b"x" * 100, 0), (b"y" * 300, 1)]
    rate = probe_decode_rate(decode, items, min_time_s=1.0, clock=clock)
    assert rate.samples >= 2 and rate.seconds >= 1.0
    assert rate.samples_per_s == pytest.approx(rate.samples / rate.seconds)
    assert 1 / 0.03 < rate.samples_per_s < 1 / 0.01
    assert rate.bound_samples_per_s(4) == pytest.approx(4 * rate.samples_per_s)
    with pytest.raises(ValueError):
        probe_decode_rate(decode, [])
