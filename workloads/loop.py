"""The measured training loop: time blocked waiting for data vs. time computing, step by step.

Measurement happens at the loader boundary of a real training loop (DELI's
``time_iteration_fetch``, gcsfs's ``DataWaitProfiler``; shared/STYLE.md §5.3)::

    t0 ─ next(it) ─ to_device(batch) ─ t1 ─ step(batch) ─ sync() ─ t2
         └──────────── wait_s ───────────┘ └──────── compute_s ──────┘

* ``wait_s``: blocked in ``next(it)`` plus the *blocking* part of the host-to-device copy (a
  non-blocking copy from pinned memory returns at once and overlaps the step). When the compute
  wants pinned batches (``compute.pin_memory``, CUDA), a helper thread takes the next batch from the
  loader and pins it while the current step runs, as ``DataLoader(pin_memory=True)``'s pin thread
  does: ``next(it)`` then waits only for what fetching, decoding and pinning did not hide behind the
  step, and the copy itself is counted in the step (its ``sync``), where the device pays for it.
* With more than one rank the step synchronises them (DDP's gradient all-reduce, or an emulated
  step's all-reduce of a gradient-sized tensor), so a rank that waited for data delays the others'
  *compute*: :func:`delibench.measure.summarize` therefore reports the slowest rank's wait per step
  beside each rank's own figures.
* ``compute_s``: the step plus the device synchronisation, so the clock is read after the device
  finished (without ``sync`` an asynchronous CUDA step would look free and its cost would show
  up as data wait in the next ``next()``).
* The first epoch's iterator setup (``iter()`` / ``iter_epoch()``) and its time to first batch are
  kept apart (:attr:`LoopResult.iterator_setup_s`, :attr:`LoopResult.time_to_first_batch_s`). In
  later epochs the accelerator does wait through the setup of the new epoch, so it is added to the
  wait of that epoch's first step, and Σ (wait + compute) over all steps equals the loop's time after
  the first setup (less callback time, which is excluded and reported as ``callback_s``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from delibench.records import LoaderStats, RunMetrics, StepSample

__all__ = ["DecodeRate", "EpochTiming", "LoopResult", "PinAhead", "measure_loader", "probe_decode_rate"]


@dataclass(frozen=True, slots=True)
class EpochTiming:
    """How one epoch of the loop went.

    Attributes:
        epoch: Epoch index.
        iterator_setup_s: Time spent in ``loader.iter_epoch(epoch)`` and ``iter()``.
        time_to_first_batch_s: From the first ``next()`` call to the first batch on the device.
        steps: Steps measured.
        samples: Samples delivered.
        complete: The loader ran out of batches (False when cut by ``max_steps_per_epoch`` or a stop).
    """

    epoch: int
    iterator_setup_s: float
    time_to_first_batch_s: float | None
    steps: int
    samples: int
    complete: bool


@dataclass(frozen=True, slots=True)
class LoopResult:
    """Everything the loop measured on one rank; consistent even when the run was stopped early.

    Attributes:
        rank: The rank.
        steps: Every measured step, in order.
        epochs: Per-epoch setup, first-batch time and sample counts.
        iterator_setup_s: Setup of the first epoch's iterator.
        time_to_first_batch_s: First ``next()`` of the first epoch to its first batch (0 if none came).
        wall_s: The loop's wall time, setup and callbacks included.
        callback_s: Time spent in ``on_step`` / ``should_stop`` (excluded from every step).
        stopped: None, ``"should_stop"`` (pruned or asked to stop) or ``"interrupted"`` (Ctrl-C).
        loader_stats: The loader's counters at the end of the loop, when it has ``stats()``.
    """

    rank: int
    steps: tuple[StepSample, ...]
    epochs: tuple[EpochTiming, ...]
    iterator_setup_s: float
    time_to_first_batch_s: float
    wall_s: float
    callback_s: float = 0.0
    stopped: str | None = None
    loader_stats: LoaderStats | None = None

    @property
    def samples(self) -> int:
        """Samples delivered over the run."""
        return sum(s.samples for s in self.steps)

    def summarize(self, *, warmup_steps: int, bytes_per_sample: float = 0.0) -> RunMetrics:
        """:func:`delibench.measure.summarize` of this single-rank result."""
        from delibench.measure import summarize

        return summarize(
            self.steps,
            warmup_steps=warmup_steps,
            iterator_setup_s={self.rank: self.iterator_setup_s},
            time_to_first_batch_s={self.rank: self.time_to_first_batch_s},
            bytes_per_sample=bytes_per_sample,
            loader_stats={self.rank: self.loader_stats} if self.loader_stats is not None else None,
        )


def _batch_samples(batch: Any) -> int:
    for attr in ("indices", "labels"):
        value = getattr(batch, attr, None)
        if value is not None:
            return len(value)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return len(batch[1])
    return len(batch)


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        try:
            close()
        except KeyboardInterrupt:  # a second Ctrl-C while cleaning up: the loader's close() will finish it
            pass


_END = object()


class PinAhead:
    """An epoch iterator whose next batch is fetched and pinned in a helper thread during the step.

    The shape of ``DataLoader(pin_memory=True)``: one batch ahead, so ``next()`` blocks only for
    the part of fetch + pin that the step did not cover. Errors of the underlying iterator are
    raised by the ``next()`` that would have returned its batch; :meth:`close` waits for the
    batch in flight before closing the underlying iterator (a generator cannot be closed while
    another thread runs it).

    Args:
        it: The loader's epoch iterator.
        pin: Batch -> the batch in page-locked memory (``TorchCompute.pin_batch``).
    """

    def __init__(self, it: Iterator[Any], pin: Callable[[Any], Any]) -> None:
        self._it = it
        self._pin = pin
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="delibench-pin")
        self._next: Future[Any] | None = self._pool.submit(self._fetch)

    def _fetch(self) -> Any:
        try:
            batch = next(self._it)
        except StopIteration:
            return _END
        return self._pin(batch)

    def __iter__(self) -> PinAhead:
        return self

    def __next__(self) -> Any:
        future, self._next = self._next, None
        if future is None:
            raise StopIteration
        batch = future.result()
        if batch is _END:
            raise StopIteration
        self._next = self._pool.submit(self._fetch)
        return batch

    def close(self) -> None:
        """Wait for the batch in flight (dropped), stop the helper thread, close the loader's iterator."""
        future, self._next = self._next, None
        try:
            if future is not None:
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - the epoch is being abandoned; its next error does not matter
                    pass
        except BaseException:
            # Ctrl-C while the helper still waits for a batch: do not wait for it (nor close a
            # generator it is running); the loader's own close() ends what is in flight.
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        self._pool.shutdown(wait=True)
        _close(self._it)


def _epoch_iterator(loader: Any, compute: Any, epoch: int) -> Iterator[Any]:
    it = iter(loader.iter_epoch(epoch))
    pin = getattr(compute, "pin_batch", None)
    if getattr(compute, "pin_memory", False) and callable(pin):
        return PinAhead(it, pin)
    return it


def measure_loader(
    loader: Any,
    compute: Any,
    *,
    epochs: int,
    start_epoch: int = 0,
    max_steps_per_epoch: int | None = None,
    rank: int = 0,
    on_step: Callable[[StepSample], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LoopResult:
    """Run ``epochs`` epochs of ``loader`` through ``compute`` and time every step.

    Args:
        loader: A :class:`~delibench.loaders.base.Loader` (``iter_epoch(epoch)``; ``stats()`` optional).
        compute: A :class:`~delibench.workloads.compute.Compute`.
        epochs: Epochs to run.
        start_epoch: Index of the first epoch (the loader's order depends on it).
        max_steps_per_epoch: Stop each epoch after this many steps (the iterator is closed).
        rank: Recorded in every sample.
        on_step: Called after every step with its sample (progress bars, pruning); its time is
            excluded from the measurement.
        should_stop: Polled after every step and before every epoch; True ends the run with a
            consistent partial result (``stopped="should_stop"``). When the compute synchronises
            ranks (``compute.synchronised``: DDP), it is polled before every epoch and after each
            batch arrives, and the ranks agree (``compute.agree_stop``): all stop after the same step.
        clock: Monotonic clock in seconds (inject a fake one in tests).

    Returns:
        The measured steps. A ``KeyboardInterrupt`` ends the loop the same way (the step in flight
        is dropped, ``stopped="interrupted"``) so that what was measured can still be saved.

    Raises:
        ValueError: ``epochs`` < 1 or ``max_steps_per_epoch`` < 1.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if max_steps_per_epoch is not None and max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1, got {max_steps_per_epoch}")
    origin = clock()
    steps: list[StepSample] = []
    timings: list[EpochTiming] = []
    stopped: str | None = None
    callback_s = 0.0
    first_setup_s = 0.0
    first_ttfb_s = 0.0

    def poll_stop() -> bool:
        nonlocal callback_s
        if should_stop is None:
            return False
        c0 = clock()
        try:
            return bool(should_stop())
        finally:
            callback_s += clock() - c0

    # NOTE: ranks whose steps synchronise (DDP) must stop after the same step, or the ones still
    # running block in a collective the stopped rank never joins. They poll ``should_stop`` at the
    # same points and agree (an all-reduce of the flag): before each epoch, and after each batch
    # arrived, before its step. A rank leaving through an exception first pays the agreement it
    # owes (voting to stop), so the others stop with it instead of waiting for it for ever.
    synchronised = bool(getattr(compute, "synchronised", False))

    def agreed_stop() -> bool:
        return bool(compute.agree_stop(poll_stop()))

    def release_others() -> None:
        try:
            compute.agree_stop(True)
        except Exception:  # noqa: BLE001 - best effort on the way out; the original error is what matters
            pass

    for index in range(epochs):
        epoch = start_epoch + index
        if agreed_stop() if synchronised else poll_stop():
            stopped = "should_stop"
            break
        owed = synchronised  # this rank owes the others the agreement of its next step
        n = samples = 0
        ttfb: float | None = None
        complete = False
        it: Iterator[Any] | None = None
        setup_s: float | None = None
        s0 = clock()
        try:
            it = _epoch_iterator(loader, compute, epoch)
            t0 = clock()
            setup_s = t0 - s0
            carry_s = setup_s if index > 0 else 0.0
            while max_steps_per_epoch is None or n < max_steps_per_epoch:
                try:
                    batch = next(it)
                except StopIteration:
                    complete = True
                    break
                count = _batch_samples(batch)
                batch = compute.to_device(batch)
                t1 = clock()
                if ttfb is None:
                    ttfb = t1 - t0
                if synchronised:
                    owed = False
                    if agreed_stop():  # in the step's time, as DDP's all-reduce waiting for a late rank is
                        stopped = "should_stop"
                        break
                compute.step(batch)
                compute.sync()
                t2 = clock()
                sample = StepSample(
                    epoch=epoch,
                    step=n,
                    rank=rank,
                    wait_s=(t1 - t0) + carry_s,
                    compute_s=t2 - t1,
                    samples=count,
                    start_s=(t0 - carry_s) - origin,
                )
                carry_s = 0.0
                steps.append(sample)
                n += 1
                samples += count
                owed = synchronised
                if on_step is not None:
                    on_step(sample)
                    callback_s += clock() - t2
                if not synchronised and poll_stop():
                    stopped = "should_stop"
                    break
                t0 = clock()
            owed = False
        except KeyboardInterrupt:
            if owed:
                release_others()
            stopped = "interrupted"
            if setup_s is None:
                setup_s = clock() - s0
        except BaseException:
            if owed:
                release_others()
            raise
        finally:
            if it is not None:
                _close(it)
        setup_s = setup_s or 0.0
        if index == 0:
            first_setup_s = setup_s
            first_ttfb_s = ttfb or 0.0
        timings.append(EpochTiming(epoch, setup_s, ttfb, n, samples, complete))
        if stopped:
            break
    stats_fn = getattr(loader, "stats", None)
    loader_stats = stats_fn() if callable(stats_fn) else None
    return LoopResult(
        rank=rank,
        steps=tuple(steps),
        epochs=tuple(timings),
        iterator_setup_s=first_setup_s,
        time_to_first_batch_s=first_ttfb_s,
        wall_s=clock() - origin,
        callback_s=callback_s,
        stopped=stopped,
        loader_stats=loader_stats if isinstance(loader_stats, LoaderStats) else None,
    )


@dataclass(frozen=True, slots=True)
class DecodeRate:
    """How fast one core turns sample bytes into training items (the prep side of DS-Analyzer).

    Attributes:
        samples: Samples decoded in the probe.
        seconds: Time they took.
        samples_per_s: Decode rate of one core.
        bytes_per_s: Encoded bytes consumed per second.
    """

    samples: int
    seconds: float
    samples_per_s: float
    bytes_per_s: float

    def bound_samples_per_s(self, workers: int) -> float:
        """The most ``workers`` decoding processes can deliver (ideal scaling; an upper bound)."""
        return self.samples_per_s * max(workers, 1)


def probe_decode_rate(
    decode: Callable[[bytes, int], Any],
    items: Sequence[tuple[bytes, int]],
    *,
    min_time_s: float = 0.5,
    max_samples: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> DecodeRate:
    """Decode ``items`` (cycling) in this process on one thread until ``min_time_s`` has passed.

    The data is already in memory, so the rate excludes any fetch: compared with the loader's
    delivered rate it tells a prep stall (CPU-bound decode) from a fetch stall. Torch is limited to
    one intra-op thread during the probe so the figure is per core, as DataLoader workers run.

    Args:
        decode: The workload's decoder.
        items: ``(bytes, label)`` pairs, e.g. the first few samples of the dataset.
        min_time_s: Keep decoding at least this long (and at least once through ``items``).
        max_samples: Stop after this many samples even if ``min_time_s`` has not passed.
        clock: Monotonic clock.

    Raises:
        ValueError: ``items`` is empty.
    """
    if not items:
        raise ValueError("probe_decode_rate needs at least one sample")
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:  # a decoder without torch
        torch = None  # type: ignore[assignment]
    try:
        decode(*items[0])  # warm-up: lazy imports, allocator
        n = 0
        nbytes = 0
        start = clock()
        elapsed = 0.0
        while True:
            data, label = items[n % len(items)]
            decode(data, label)
            n += 1
            nbytes += len(data)
            elapsed = clock() - start
            if max_samples is not None and n >= max_samples:
                break
            if elapsed >= min_time_s and n >= len(items):
                break
    finally:
        if threads is not None and torch is not None:
            torch.set_num_threads(threads)
    return DecodeRate(n, elapsed, n / elapsed if elapsed > 0 else float("inf"), nbytes / elapsed if elapsed > 0 else float("inf"))
