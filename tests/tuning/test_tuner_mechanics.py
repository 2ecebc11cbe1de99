"""Tuner mechanics on a fake objective (in-memory Optuna storage, no I/O): seeding, pruning, objectives, exports."""

from __future__ import annotations

import json
from collections.abc import Callable

import optuna
import pytest

from delibench.errors import RuntimeFailure, UsageError
from delibench.records import StepSample
from delibench.tuning.export import (
    best_trials,
    importances,
    model_error,
    read_best_config,
    recommended_trial,
    trials_document,
    write_best_yaml,
)
from delibench.tuning.guide import Predictor
from delibench.tuning.model import Demand, LinkEstimate, predict_wait
from delibench.tuning.simulator import CacheSimulator
from delibench.tuning.space import SearchSpace, TuneConfig
from delibench.tuning.tuner import Measurement, TuneSettings, Tuner

MiB = 1024**2
SIZES = [100_000] * 200  # 20 MB dataset
LINK = LinkEstimate(rtt_s=0.03, bandwidth_bytes_per_s=50e6, sample_bytes=100_000)
DEMAND = Demand(batch_size=8, step_time_s=0.05, num_workers=2)
SPACE = SearchSpace(
    mem_budget_bytes=64 * MiB, dataset_bytes=sum(SIZES), cache_levels=3, prefetch_depths=(2, 8, 32)[:0] or (2, 4, 8, 16, 32),
    concurrencies=(1, 2, 4, 8, 16),
)
STEPS = 12


def settings(**kw: object) -> TuneSettings:
    base = dict(dataset_url="memory://fake", workload="resnet18", batch_size=8, steps_per_trial=STEPS, warmup_steps=2)
    base.update(kw)
    return TuneSettings(**base)  # type: ignore[arg-type]


def predictor() -> Predictor:
    return Predictor(LINK, DEMAND, CacheSimulator(SIZES, epochs=2, max_samples_per_epoch=STEPS * 8, ranks=(0,)))


class FakeRuns:
    """Stands in for delibench.app.session.run: the 'measured' wait is the model's with a 20 % bias, reported per step."""

    def __init__(self, cost: bool = True, bad: Callable[[TuneConfig], bool] | None = None) -> None:
        self.pred = predictor()
        self.cost = cost
        self.bad = bad or (lambda c: False)
        self.steps_taken: list[int] = []

    def __call__(self, config: TuneConfig, on_step: Callable[[StepSample], None], should_stop: Callable[[], bool]) -> Measurement:
        if self.bad(config):
            raise RuntimeFailure("simulated storage failure")
        wait = min(0.95, predict_wait(config, LINK, DEMAND, self.pred.miss_rate(config)).wait_fraction * 1.2 + 0.01)
        compute = 0.05
        taken = 0
        for epoch in range(2):
            for step in range(STEPS):
                if should_stop():
                    break
                on_step(StepSample(epoch, step, 0, wait_s=compute * wait / (1 - wait), compute_s=compute, samples=8))
                taken += 1
        self.steps_taken.append(taken)
        usd = 0.01 * (1 + wait) + config.cache_size_bytes / 1e10
        return Measurement(wait_fraction=wait, accelerator_utilization=1 - wait, cost_usd_per_epoch=usd if self.cost else None, hit_rate=0.0, run_id=f"fake-{len(self.steps_taken)}")


def make_tuner(storage: object, name: str = "s", fake: FakeRuns | None = None, **kw: object) -> Tuner:
    s = settings(**{k: v for k, v in kw.items() if k in ("objective", "min_au")})
    return Tuner(s, kw.get("space", SPACE), storage=storage, study_name=name, predictor=predictor(), evaluate=fake or FakeRuns(),  # type: ignore[arg-type]
                 prune=bool(kw.get("prune", True)), repeat_best=int(kw.get("repeat_best", 2)))  # type: ignore[call-overload]


def test_model_guesses_run_first_and_predictions_are_recorded(tmp_path) -> None:
    tuner = make_tuner(optuna.storages.InMemoryStorage())
    guesses = tuner.seed_with_model(3)
    assert len(guesses) == 3
    assert len({g.config.cache_size_bytes for g in guesses}) == 3
    tuner.optimize(8)
    trials = tuner.study.get_trials()
    assert len(trials) == 8
    for t, g in zip(trials[:3], guesses):
        assert t.user_attrs["source"] == "model"
        assert SPACE.from_params(t.params) == g.config
    assert all(t.user_attrs["source"] in ("sampler", "repeat") for t in trials[3:])
    # From the 6th trial on, the two best so far are measured a second time (tagged, pointing at the first).
    for t in trials:
        if t.user_attrs["source"] == "repeat":
            assert t.number >= 5 and trials[t.user_attrs["repeat_of"]].params == t.params
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all("predicted_wait_fraction" in t.user_attrs and "measured_wait_fraction" in t.user_attrs for t in done)
    assert all({"predicted_low", "predicted_high", "predicted_trusted", "predicted_uncertain_reason"} <= set(t.user_attrs) for t in done)
    assert all(t.user_attrs["predicted_low"] <= t.user_attrs["predicted_wait_fraction"] <= t.user_attrs["predicted_high"] for t in done)
    # The fake measures prediction x 1.2 + 0.01: the recorded error must show that bias.
    err = model_error(tuner.study)
    assert err["count"] == len(done)
    assert err["bias"] < 0  # the model predicts lower wait than "measured"
    assert err["trusted"]["count"] == sum(t.user_attrs["predicted_trusted"] for t in done)
    best = recommended_trial(tuner.study)
    assert best.values[0] == min(t.values[0] for t in done)
    # Seeding again does not enqueue what was already tried.
    tuner.seed_with_model(3)
    assert sum(t.state == optuna.trial.TrialState.WAITING for t in tuner.study.get_trials()) == 0


def test_best_yaml_round_trip_and_run_config_accepts_it(tmp_path) -> None:
    from delibench.config import load_config

    tuner = make_tuner(optuna.storages.InMemoryStorage())
    tuner.optimize(4)
    path = tmp_path / "best.yaml"
    config = write_best_yaml(tuner.study, path)
    assert path.read_text().startswith("# delibench tune: study s, trial")
    again, rest = read_best_config(path)
    assert again == config and rest == {}
    run_cfg = load_config(path)
    spec = run_cfg["loader"]
    assert spec.kind == "deli"
    from delibench.units import parse_bytes

    assert parse_bytes(spec.options["cache_size"]) == config.cache_size_bytes
    assert spec.options["prefetch_depth"] == config.prefetch_depth
    assert spec.options["concurrency"] == config.concurrency


def test_trials_document_is_a_report_study_export() -> None:
    from delibench.reports.study import parse_study

    tuner = make_tuner(optuna.storages.InMemoryStorage(), objective="wait,cost")
    tuner.seed_with_model(2)
    tuner.optimize(6)
    doc = json.loads(json.dumps(trials_document(tuner.study)))  # JSON-safe
    parsed = parse_study(doc)
    assert parsed.objective_names == ("data_wait_fraction", "usd_per_epoch")
    assert len(parsed.trials) == 6
    assert doc["pareto_front"] and doc["recommended"]["number"] in doc["pareto_front"]
    assert doc["importances"] is not None and set(doc["importances"]) <= set(doc["trials"][0]["optuna_params"])


def test_pareto_front_is_non_dominated() -> None:
    tuner = make_tuner(optuna.storages.InMemoryStorage(), objective="wait,cost")
    tuner.optimize(10)
    front = best_trials(tuner.study)
    done = [t for t in tuner.study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert front
    for f in front:
        assert not any(o.values[0] <= f.values[0] and o.values[1] <= f.values[1] and o.values != f.values for o in done)


def test_constraint_form_picks_the_cheapest_feasible_config() -> None:
    tuner = make_tuner(optuna.storages.InMemoryStorage(), objective="cost", min_au=0.6)
    tuner.seed_with_model(3)
    tuner.optimize(10)
    done = [t for t in tuner.study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in done if t.user_attrs["accelerator_utilization"] >= 0.6]
    best = recommended_trial(tuner.study)
    if not feasible:
        assert best is None
    else:
        assert best.values[0] == min(t.values[0] for t in feasible)
        assert best.user_attrs["au_shortfall"] <= 0


def test_cost_without_prices_uses_cache_bytes_and_says_so() -> None:
    tuner = make_tuner(optuna.storages.InMemoryStorage(), objective="cost", fake=FakeRuns(cost=False))
    tuner.optimize(3)
    doc = trials_document(tuner.study)
    assert doc["cost_unit"] == "cache_bytes" and doc["objective_names"] == ["cache_bytes"]
    for t in doc["trials"]:
        assert t["values"][0] == t["params"]["cache_size_bytes"]


def test_hopeless_trials_are_pruned_and_stopped_early() -> None:
    fake = FakeRuns()
    tuner = make_tuner(optuna.storages.InMemoryStorage(), fake=fake)
    good = TuneConfig(SPACE.cache_sizes[-1], 32, 16, "lru")
    for _ in range(4):
        tuner.study.enqueue_trial(SPACE.to_params(good))
    tuner.study.enqueue_trial(SPACE.to_params(TuneConfig(0, 2, 1, "lru")))  # one GET in flight: hopeless
    tuner.optimize(5)
    states = [t.state for t in tuner.study.get_trials()]
    assert states[:4] == [optuna.trial.TrialState.COMPLETE] * 4
    assert states[4] == optuna.trial.TrialState.PRUNED
    assert fake.steps_taken[4] < 2 * STEPS  # the run was told to stop
    # Only the measured (last) epoch is reported, step by step.
    assert min(tuner.study.trials[0].intermediate_values) >= 0
    assert len(tuner.study.trials[0].intermediate_values) == STEPS


def test_runtime_failures_fail_the_trial_and_the_study_goes_on() -> None:
    fake = FakeRuns(bad=lambda c: c.concurrency == 1)
    tuner = make_tuner(optuna.storages.InMemoryStorage(), fake=fake, prune=False)
    tuner.study.enqueue_trial(SPACE.to_params(TuneConfig(0, 2, 1, "lru")))
    tuner.optimize(3)
    states = [t.state for t in tuner.study.get_trials()]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert len(states) == 3


def test_resume_adds_to_the_same_study_and_rejects_other_settings() -> None:
    storage = optuna.storages.InMemoryStorage()
    make_tuner(storage, "shared").optimize(2)
    second = make_tuner(storage, "shared")
    second.optimize(2)
    assert len(second.study.get_trials()) == 4
    with pytest.raises(UsageError, match="optimises"):
        make_tuner(storage, "shared", objective="cost")
    with pytest.raises(UsageError, match="search space"):
        make_tuner(storage, "shared", space=SearchSpace(mem_budget_bytes=32 * MiB, dataset_bytes=sum(SIZES)))


def test_importances_need_enough_trials() -> None:
    tuner = make_tuner(optuna.storages.InMemoryStorage(), prune=False)
    tuner.optimize(3)
    assert importances(tuner.study) is None
    tuner.optimize(3)
    imp = importances(tuner.study)
    assert imp is not None and abs(sum(imp.values()) - 1.0) < 1e-6


@pytest.mark.parametrize("kw", [{"objective": "speed"}, {"min_au": 1.5}, {"steps_per_trial": 0}, {"epochs_per_trial": 0}])
def test_bad_settings(kw: dict) -> None:
    with pytest.raises(UsageError):
        settings(**kw)


class NoisyFakeRuns(FakeRuns):
    """FakeRuns plus seeded noise (sd 0.05) on every measurement."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        import random

        self.rng = random.Random(seed)

    def __call__(self, config: TuneConfig, on_step: Callable[[StepSample], None], should_stop: Callable[[], bool]) -> Measurement:
        m = super().__call__(config, on_step, should_stop)
        wait = min(0.95, max(0.01, m.wait_fraction + self.rng.gauss(0.0, 0.05)))
        return Measurement(wait_fraction=wait, accelerator_utilization=1 - wait, cost_usd_per_epoch=m.cost_usd_per_epoch, hit_rate=0.0, run_id=m.run_id)


def test_tune_show_prints_repeats_the_trusted_model_error_and_best_yaml_the_mean(tmp_path, capsys) -> None:
    from delibench.cli.app import main
    from delibench.tuning.export import recommended_config

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    tuner = make_tuner(url, "noisy", fake=NoisyFakeRuns(seed=2), prune=False)
    tuner.seed_with_model(3)
    tuner.optimize(12)
    chosen = recommended_config(tuner.study)
    assert chosen is not None and chosen.n >= 2, "the recommended config was not measured again"
    path = tmp_path / "best.yaml"
    write_best_yaml(tuner.study, path)
    head = path.read_text()
    assert f"(mean of {chosen.n} measurements, trials {', '.join(str(t.number) for t in chosen.trials)})" in head
    assert main(["tune", "show", "--storage", url, "--study", "noisy"]) == 0
    out = capsys.readouterr().out
    assert "repeats: " in out and "re-measured one of the best configurations" in out
    assert f"{chosen.first.user_attrs['label']}: {chosen.n} runs" in out
    assert "model: mean |predicted - measured| wait = " in out and "(every prediction trusted)" in out
    assert main(["tune", "show", "--storage", url, "--study", "noisy", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recommended"]["measurements"]["trials"] == [t.number for t in chosen.trials]
    assert doc["noise"]["repeat_trials"] >= 1 and doc["noise"]["pooled_sd"] > 0
    assert all(t["predicted_trusted"] is not None for t in doc["trials"])


def test_model_line_says_whether_and_why_the_model_proposed_the_first_trials() -> None:
    from types import SimpleNamespace

    from delibench.cli.tune import _model_line

    assert "none (the step time is unknown" in _model_line(SimpleNamespace(predictor=None), 3)
    trusted = SimpleNamespace(predictor=object(), guesses=[1, 2, 3], model_trusted=True, model_note="27 of 27 predictions trusted")
    assert _model_line(trusted, 3) == "model: proposes the first 3 trial(s) (27 of 27 predictions trusted)"
    busy = SimpleNamespace(predictor=object(), guesses=[], model_trusted=False,
                           model_note="10 of 27 predictions uncertain: the host was busy with other work when probed")
    line = _model_line(busy, 3)
    assert line.startswith("model: not trusted here (10 of 27") and "the sampler explores from the first" in line
    assert "--model-start 0" in _model_line(SimpleNamespace(predictor=object(), guesses=[], model_trusted=True, model_note="ok"), 0)
    assert "already in the study" in _model_line(SimpleNamespace(predictor=object(), guesses=[], model_trusted=True, model_note="ok"), 3)


def test_repeat_best_must_not_be_negative() -> None:
    with pytest.raises(UsageError, match="repeat-best"):
        make_tuner(optuna.storages.InMemoryStorage(), repeat_best=-1)
