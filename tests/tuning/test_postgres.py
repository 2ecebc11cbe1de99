"""Distributed tuning on a real database: several tune processes (standing for several GPU VMs) share one study
through a PostgreSQL server (the ``postgres_server`` fixture, from the ``pgserver`` wheel).

Each process is a separate Python interpreter running this file as a script: the real ``Tuner`` with the
real Optuna RDB storage, a fake evaluator (no dataset, no link; a deterministic wait per configuration).
They start together, each enqueues the model's best guesses and runs its trials, then reads the best.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

MiB = 1024**2
SIZES = [100_000] * 200
STEPS = 6
GUESSES = 3
PROCESSES = 3
TRIALS_EACH = 4
PASSWORD = "pg-s3cret-pw"


def _space():  # noqa: ANN202 (imports stay inside: this file also runs as a script)
    from delibench.tuning.space import SearchSpace

    return SearchSpace(
        mem_budget_bytes=64 * MiB, dataset_bytes=sum(SIZES), cache_levels=3,
        prefetch_depths=(2, 4, 8, 16, 32), concurrencies=(1, 2, 4, 8, 16),
    )


def _tuner(url: str, study: str):  # noqa: ANN202
    from delibench.records import StepSample
    from delibench.tuning.guide import Predictor
    from delibench.tuning.model import Demand, LinkEstimate, predict_wait
    from delibench.tuning.simulator import CacheSimulator
    from delibench.tuning.tuner import Measurement, TuneSettings, Tuner

    link = LinkEstimate(rtt_s=0.03, bandwidth_bytes_per_s=50e6, sample_bytes=100_000)
    demand = Demand(batch_size=8, step_time_s=0.05, num_workers=2)
    pred = Predictor(link, demand, CacheSimulator(SIZES, epochs=2, max_samples_per_epoch=STEPS * 8, ranks=(0,)))
    settings = TuneSettings(dataset_url="memory://fake", workload="resnet18", batch_size=8, steps_per_trial=STEPS, warmup_steps=1)

    def evaluate(config, on_step: Callable[[StepSample], None], should_stop: Callable[[], bool]) -> Measurement:  # noqa: ANN001
        # The model's wait with a bias: deterministic per configuration, so every process agrees on the best.
        wait = min(0.95, predict_wait(config, link, demand, pred.miss_rate(config)).wait_fraction * 1.2 + 0.01)
        for epoch in range(2):
            for step in range(STEPS):
                if should_stop():
                    break
                on_step(StepSample(epoch, step, 0, wait_s=0.05 * wait / (1 - wait), compute_s=0.05, samples=8))
        time.sleep(0.02)  # a trial takes a moment, so the processes' trials interleave
        return Measurement(wait_fraction=wait, accelerator_utilization=1 - wait, cost_usd_per_epoch=None, hit_rate=0.0, run_id=f"fake-{config.label}")

    return Tuner(settings, _space(), storage=url, study_name=study, predictor=pred, evaluate=evaluate, prune=False)


def _worker(url: str, study: str, n_trials: int, rendezvous: Path, total: int, out: Path) -> None:
    """One tune process: meet the others, seed, optimise, wait for all trials, write what it reads as best."""
    import optuna

    from delibench.tuning.export import recommended_trial, write_best_yaml

    tuner = _tuner(url, study)
    (rendezvous / f"ready-{out.stem}").touch()
    deadline = time.monotonic() + 60
    while len(list(rendezvous.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.01)
    guesses = tuner.seed_with_model(GUESSES)  # all processes at once: the race the study lock closes
    tuner.optimize(n_trials)
    while time.monotonic() < deadline:
        states = [t.state for t in tuner.study.get_trials(deepcopy=False)]
        if sum(s.is_finished() for s in states) >= total:
            break
        time.sleep(0.05)
    study_obj = optuna.load_study(study_name=study, storage=url)
    best = study_obj.best_trial
    config = write_best_yaml(study_obj, out.with_suffix(".yaml"))
    rec = recommended_trial(study_obj)
    out.write_text(json.dumps({
        "best_number": best.number, "best_params": best.params, "best_value": best.value,
        "recommended": rec.number if rec is not None else None, "config": config.as_dict(),
        "best_yaml": out.with_suffix(".yaml").read_text(), "guesses": [g.config.label for g in guesses],
    }, sort_keys=True))


@pytest.mark.timeout(120)
def test_tune_processes_share_one_postgres_study(postgres_server, tmp_path: Path) -> None:
    import optuna

    from tests.tuning.processes import run_together

    url = postgres_server.url("shared_study", password=PASSWORD)  # trust auth: the password is only carried
    study = "fp-0123456789ab"  # what Fingerprint.study_name gives every VM of one environment
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    total = PROCESSES * TRIALS_EACH
    outputs = run_together(
        [[__file__, url, study, str(TRIALS_EACH), str(rendezvous), str(total), str(tmp_path / f"proc{i}.json")] for i in range(PROCESSES)],
        cwd=tmp_path, timeout_s=90,
    )
    assert all(PASSWORD not in output for output in outputs)

    loaded = optuna.load_study(study_name=study, storage=url)
    trials = loaded.get_trials(deepcopy=False)
    # Every process ran its own trials on the one study: none lost, none run twice.
    assert len(trials) == total, [(t.number, t.state) for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) >= 2, "the trials did not come from several processes"
    # The model's guesses were enqueued once for the study, not once per process.
    model = [t for t in trials if t.user_attrs.get("source") == "model"]
    model_params = [tuple(sorted(t.params.items())) for t in model]
    assert len(model) == GUESSES, [(t.number, t.params) for t in model]
    assert len(set(model_params)) == len(model_params)
    # Each process drew its own start points (its own sampler seed): none repeats another's sequence.
    by_pid: dict[int, list[tuple]] = {}
    for t in trials:
        if t.user_attrs.get("source") == "sampler":
            by_pid.setdefault(t.user_attrs["pid"], []).append(tuple(sorted(t.params.items())))
    firsts = [seq[0] for seq in by_pid.values()]
    assert len(set(firsts)) == len(firsts), by_pid
    # Every process reads the same best trial and exports the same best config.
    docs = [json.loads((tmp_path / f"proc{i}.json").read_text()) for i in range(PROCESSES)]
    assert all(d == docs[0] for d in docs[1:]), docs
    assert docs[0]["best_number"] == loaded.best_trial.number
    assert docs[0]["best_params"] == loaded.best_trial.params
    assert "loader:" in docs[0]["best_yaml"]


def test_unreachable_server_is_one_clear_line_without_the_password(capsys) -> None:
    from delibench.cli.app import main
    from delibench.errors import UsageError
    from delibench.tuning.tuner import open_storage

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://tuner:{PASSWORD}@127.0.0.1:{port}/studies"
    with pytest.raises(UsageError) as info:
        open_storage(url)
    message = str(info.value)
    assert "cannot reach study database" in message and "tuner@" not in message and PASSWORD not in message
    assert f"127.0.0.1:{port}/studies" in message and "\n" not in message

    code = main(["tune", "show", "--storage", url])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot reach study database" in err and PASSWORD not in err and "Traceback" not in err


def test_missing_database_and_driver_are_usage_errors_without_the_password(postgres_server) -> None:
    from delibench.errors import UsageError
    from delibench.tuning.tuner import check_storage_url, open_storage

    good = postgres_server.url("exists_db", password=PASSWORD)
    missing = good.replace("/exists_db", "/no_such_db")
    with pytest.raises(UsageError, match="no_such_db") as info:
        open_storage(missing)
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value.__dict__)
    assert open_storage(good) is not None  # the server and driver work: the failure above is the database's

    with pytest.raises(UsageError, match="driver is not installed") as info:
        check_storage_url(f"postgresql+pg8000://u:{PASSWORD}@h/db")
    assert PASSWORD not in str(info.value)


def test_bare_postgresql_url_uses_psycopg_when_psycopg2_is_missing() -> None:
    import importlib.util

    from delibench.tuning.tuner import check_storage_url

    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed: SQLAlchemy's default driver serves postgresql://")
    assert check_storage_url(f"postgresql://u:{PASSWORD}@db.example:5432/studies") == f"postgresql+psycopg://u:{PASSWORD}@db.example:5432/studies"


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
