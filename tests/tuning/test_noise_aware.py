"""The noise-aware incumbent on a fake noisy objective (seeded, no I/O): repeats of the best configurations,
the pick by the mean of a configuration's measurements, and repeats enqueued once when processes share a study.

The fake's "true" wait of a configuration is a fixed function of its knobs; each measurement adds
noise drawn from a generator seeded by (seed, configuration, how many times it was measured), so a
configuration's n-th measurement is the same whichever tuner or process takes it.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

MiB = 1024**2
STEPS = 4


def _space():  # noqa: ANN202 (imports stay inside: this file also runs as a script)
    from delibench.tuning.space import SearchSpace

    return SearchSpace(mem_budget_bytes=64 * MiB, dataset_bytes=20_000_000, cache_levels=2,
                       prefetch_depths=(2, 4, 8, 16), concurrencies=(1, 2, 4, 8), evictions=("lru",))


def true_wait(config) -> float:  # noqa: ANN001
    """Lower with more requests in flight (up to the depth) and a bigger cache; best: depth 16, conc 8, the biggest cache."""
    in_flight = min(config.prefetch_depth, config.concurrency)
    level = _space().cache_sizes.index(config.cache_size_bytes)
    return round(0.08 + 0.48 / in_flight + 0.04 * (2 - level) + 0.005 * (16 // config.prefetch_depth), 4)


class NoisyRuns:
    """Measures ``true_wait`` plus seeded Gaussian noise; ``lucky`` scripts a measurement: {(label, n-th): offset}."""

    def __init__(self, seed: int = 0, sd: float = 0.02, lucky: dict[tuple[str, int], float] | None = None, pause_s: float = 0.0) -> None:
        self.seed, self.sd, self.lucky, self.pause_s = seed, sd, lucky or {}, pause_s
        self.counts: dict[str, int] = {}
        self.calls: list[str] = []

    def __call__(self, config, on_step: Callable, should_stop: Callable[[], bool]):  # noqa: ANN001, ANN204
        from delibench.records import StepSample
        from delibench.tuning.tuner import Measurement

        n = self.counts.get(config.label, 0)
        self.counts[config.label] = n + 1
        self.calls.append(config.label)
        rng = random.Random(zlib.crc32(f"{self.seed}|{config.label}|{n}".encode()))
        offset = self.lucky.get((config.label, n))
        wait = true_wait(config) + (offset if offset is not None else rng.gauss(0.0, self.sd))
        wait = min(0.95, max(0.01, wait))
        for epoch in range(2):
            for step in range(STEPS):
                if should_stop():
                    break
                on_step(StepSample(epoch, step, 0, wait_s=0.05 * wait / (1 - wait), compute_s=0.05, samples=8))
        if self.pause_s:
            time.sleep(self.pause_s)
        return Measurement(wait_fraction=wait, accelerator_utilization=1 - wait, hit_rate=0.0, run_id=f"fake-{len(self.calls)}")


def make_tuner(storage, name: str = "s", evaluate=None, **kw):  # noqa: ANN001, ANN003, ANN201
    from delibench.tuning.tuner import TuneSettings, Tuner

    settings = TuneSettings(dataset_url="memory://fake", workload="resnet18", batch_size=8, steps_per_trial=STEPS, warmup_steps=1)
    kw.setdefault("prune", False)
    return Tuner(settings, _space(), storage=storage, study_name=name, evaluate=evaluate or NoisyRuns(), **kw)


def _config(cache_level: int, depth: int, conc: int):  # noqa: ANN202
    from delibench.tuning.space import TuneConfig

    return TuneConfig(_space().cache_sizes[cache_level], depth, conc, "lru")


def _truth_of(study, trial) -> float:  # noqa: ANN001
    return true_wait(_space().from_params(trial.params))


def test_noise_aware_pick_is_the_truly_better_config_where_single_best_takes_the_lucky_one() -> None:
    import optuna

    from delibench.tuning.export import recommended_config, recommended_trial, trials_document

    best = min(_space().grid(), key=true_wait)  # depth 16, conc 8, the biggest cache
    mediocre = _config(0, 4, 2)  # true wait 0.42: measured 0.05 once, by luck
    others = [_config(1, 2, 1), _config(0, 8, 2), _config(1, 4, 4)]
    lucky = {(mediocre.label, 0): 0.05 - true_wait(mediocre)}
    picks = {}
    for repeat_best in (0, 2):
        tuner = make_tuner(optuna.storages.InMemoryStorage(), evaluate=NoisyRuns(seed=3, lucky=lucky), repeat_best=repeat_best, sampler_seed=1)
        for c in (mediocre, best, *others):
            tuner.study.enqueue_trial(tuner.space.to_params(c))
        tuner.optimize(9)
        trials = tuner.study.get_trials()
        assert len(trials) == 9
        rec = recommended_trial(tuner.study)
        picks[repeat_best] = tuner.space.from_params(rec.params)
        if repeat_best:
            repeats = [t for t in trials if t.user_attrs.get("source") == "repeat"]
            # The two best so far after 5 trials (the lucky one and the true best) were measured again, lucky first.
            assert [tuner.space.from_params(t.params) for t in repeats[:2]] == [mediocre, best]
            assert [t.user_attrs["repeat_of"] for t in repeats[:2]] == [0, 1]
            chosen = recommended_config(tuner.study)
            assert chosen.n >= 2 and chosen.first.number == 1
            doc = trials_document(tuner.study)
            assert doc["recommended"]["measurements"]["n"] == chosen.n
            assert doc["noise"]["repeat_trials"] == len(repeats) and doc["noise"]["pooled_sd"] > 0
    assert picks[0] == mediocre  # single best value: the lucky 0.05
    assert picks[2] == best


def test_repeats_are_tagged_counted_in_the_budget_and_never_left_waiting() -> None:
    import optuna

    from delibench.tuning.tuner import params_key

    tuner = make_tuner(optuna.storages.InMemoryStorage(), evaluate=NoisyRuns(seed=5, sd=0.05), repeat_best=2, sampler_seed=0, prune=True)
    tuner.optimize(14)
    trials = tuner.study.get_trials()
    assert len(trials) == 14
    assert not any(t.state == optuna.trial.TrialState.WAITING for t in trials)
    repeats = [t for t in trials if t.user_attrs.get("source") == "repeat"]
    assert repeats, "no repeat in 14 trials"
    by_number = {t.number: t for t in trials}
    for t in repeats:
        first = by_number[t.user_attrs["repeat_of"]]
        assert params_key(first.params) == params_key(t.params) and first.number < t.number
        assert not t.intermediate_values  # a repeat is measured in full, never pruned
    # Each configuration is re-measured at most once (repeat_measurements = 2).
    keys = [params_key(t.params) for t in repeats]
    assert len(keys) == len(set(keys))
    assert all(t.number >= 5 for t in repeats)  # after the sampler's random start
    # Off: no repeats at all.
    off = make_tuner(optuna.storages.InMemoryStorage(), evaluate=NoisyRuns(seed=5, sd=0.05), repeat_best=0)
    off.optimize(8)
    assert not any(t.user_attrs.get("source") == "repeat" for t in off.study.get_trials())


def test_over_seeds_the_noise_aware_pick_errs_less_than_the_single_best() -> None:
    """Same seeds, same noise (sd 0.04): how far is each pick from the best config its own study measured?

    (Over 40 seeds, 20 trials: 7 of 40 noise-aware picks more than 0.02 worse than their study's best
    measured config against 14 of 40 single-best picks; at sd 0.08, 20 against 28.)
    """
    import optuna

    from delibench.tuning.export import recommended_trial

    errors: dict[int, list[float]] = {0: [], 2: []}
    for seed in range(20):
        for repeat_best in (0, 2):
            tuner = make_tuner(optuna.storages.InMemoryStorage(), f"s{seed}", evaluate=NoisyRuns(seed=seed, sd=0.04),
                               repeat_best=repeat_best, sampler_seed=seed)
            tuner.optimize(20)
            done = [t for t in tuner.study.get_trials() if t.values]
            pick = _truth_of(tuner.study, recommended_trial(tuner.study))
            errors[repeat_best].append(pick - min(_truth_of(tuner.study, t) for t in done))
    assert statistics.fmean(errors[2]) < 0.75 * statistics.fmean(errors[0]), errors
    assert sum(e > 0.02 for e in errors[2]) < sum(e > 0.02 for e in errors[0]), errors


def test_model_band_and_trust_are_stored_and_the_error_is_split() -> None:
    import optuna

    from delibench.tuning.export import model_error
    from delibench.tuning.guide import Predictor
    from delibench.tuning.model import Demand, LinkEstimate
    from delibench.tuning.simulator import CacheSimulator

    link = LinkEstimate(rtt_s=0.03, bandwidth_bytes_per_s=50e6, sample_bytes=100_000)
    pred = Predictor(link, Demand(batch_size=8, step_time_s=0.05, num_workers=2),
                     CacheSimulator([100_000] * 200, epochs=2, max_samples_per_epoch=STEPS * 8, ranks=(0,)))
    tuner = make_tuner(optuna.storages.InMemoryStorage(), predictor=pred, repeat_best=0)
    tuner.optimize(4)
    for t in tuner.study.get_trials():
        ua = t.user_attrs
        p = pred.guess(_space().from_params(t.params)).prediction
        assert (ua["predicted_low"], ua["predicted_high"], ua["predicted_trusted"], ua["predicted_uncertain_reason"]) == (
            p.low, p.high, p.trusted, p.uncertain_reason)
    # The error over trusted predictions leaves the untrusted ones out; the overall one keeps them.
    study = optuna.create_study()
    for i, (predicted, measured, trusted) in enumerate([(0.1, 0.12, True), (0.2, 0.19, True), (0.3, 0.6, False), (0.4, 0.41, None)]):
        study.add_trial(optuna.trial.create_trial(
            params={"x": i}, distributions={"x": optuna.distributions.IntDistribution(0, 10)}, value=measured,
            user_attrs={"predicted_wait_fraction": predicted, "measured_wait_fraction": measured, "predicted_trusted": trusted}))
    err = model_error(study)
    assert err["count"] == 4 and err["untrusted_count"] == 1
    assert err["trusted"]["count"] == 2 and err["trusted"]["mean_abs_error"] == pytest.approx(0.015)
    assert err["mean_abs_error"] == pytest.approx((0.02 + 0.01 + 0.3 + 0.01) / 4)


# ---------------------------------------------------------------------------------------- several processes
PROCESSES = 3
PRELOADED = 6


def _worker(url: str, study: str, mode: str, n_trials: int, rendezvous: Path, out: Path) -> None:
    """One process: meet the others, then either call ``enqueue_repeat`` once (all at the same moment) or optimise."""
    tuner = make_tuner(url, study, evaluate=NoisyRuns(seed=11, sd=0.05, pause_s=0.02), repeat_best=2)
    (rendezvous / f"ready-{out.stem}").touch()
    deadline = time.monotonic() + 60
    while len(list(rendezvous.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.005)
    if mode == "enqueue":
        got = tuner.enqueue_repeat()
        out.write_text(json.dumps({"enqueued": None if got is None else got.first.number}))
    else:
        tuner.optimize(n_trials)
        out.write_text(json.dumps({"done": n_trials}))


def _run_processes(url: str, study: str, mode: str, n_trials: int, tmp_path: Path) -> list[dict]:
    from tests.tuning.processes import run_together

    rendezvous = tmp_path / f"rendezvous-{mode}"
    rendezvous.mkdir()
    run_together(
        [[__file__, url, study, mode, str(n_trials), str(rendezvous), str(tmp_path / f"{mode}{i}.json")] for i in range(PROCESSES)],
        cwd=tmp_path, timeout_s=100,
    )
    return [json.loads((tmp_path / f"{mode}{i}.json").read_text()) for i in range(PROCESSES)]


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request, tmp_path: Path) -> str:  # noqa: ANN001
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.url(f"noise_{tmp_path.name[-20:].lower().replace('-', '_')}")


@pytest.mark.timeout(180)
def test_repeats_are_enqueued_once_across_processes(shared_url: str, tmp_path: Path) -> None:
    import optuna

    from delibench.tuning.tuner import params_key

    study = "fp-noise"
    make_tuner(shared_url, study, evaluate=NoisyRuns(seed=11, sd=0.05), repeat_best=0).optimize(PRELOADED)
    # All processes ask for a repeat at the same moment: each of the two best is enqueued once, by one of them.
    results = _run_processes(shared_url, study, "enqueue", 0, tmp_path)
    enqueued = [r["enqueued"] for r in results if r["enqueued"] is not None]
    loaded = optuna.load_study(study_name=study, storage=shared_url)
    waiting = [t for t in loaded.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 2 == len(enqueued), (enqueued, [t.system_attrs for t in waiting])
    assert sorted(t.user_attrs["repeat_of"] for t in waiting) == sorted(enqueued)
    assert len({params_key(t.system_attrs["fixed_params"]) for t in waiting}) == 2
    # Then they tune together: the waiting repeats run once, and no configuration is repeated twice.
    _run_processes(shared_url, study, "optimize", 4, tmp_path)
    trials = optuna.load_study(study_name=study, storage=shared_url).get_trials()
    assert len(trials) == PRELOADED + PROCESSES * 4, len(trials)  # the waiting repeats ran as part of the processes' trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    repeats = [params_key(t.params) for t in trials if t.user_attrs.get("source") == "repeat"]
    assert len(repeats) == len(set(repeats)) >= 2
    assert len({t.user_attrs["pid"] for t in trials[PRELOADED:]}) >= 2


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]), Path(sys.argv[6]))
