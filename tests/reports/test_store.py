"""ResultStore: write/read/latest, step sidecars, run ids, migrations and refusals that name the file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest

from delibench.errors import UsageError
from delibench.records import RESULT_SCHEMA_VERSION, RunRecord, from_dict
from delibench.reports.store import (
    ResultStore,
    load_record,
    load_records,
    migrate,
    new_run_id,
    read_steps_csv,
    spec_hash,
    write_steps_csv,
)

DATA = Path(__file__).parent / "data"


def test_write_then_read_round_trips_with_sidecar(tmp_path, make_record) -> None:
    store = ResultStore(tmp_path / "results")
    record = make_record("deli", hit_rate_epoch2=0.7)
    path = store.write(record)
    assert path == tmp_path / "results" / f"{record.run_id}.json"
    sidecar = tmp_path / "results" / f"{record.run_id}.steps.csv"
    assert sidecar.exists()
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == RESULT_SCHEMA_VERSION
    assert on_disk["timeline"] == [] and on_disk["steps_path"] == sidecar.name  # per-step data kept out of the JSON
    back = store.read(record.run_id)
    assert back == dataclasses.replace(record, steps_path=sidecar.name)  # timeline restored from the sidecar, floats exact
    assert store.read(record.run_id, with_steps=False).timeline == ()


def test_explicit_steps_and_keep_timeline(tmp_path, make_record) -> None:
    store = ResultStore(tmp_path)
    record = make_record("bucket")
    steps = record.timeline[:5]
    store.write(dataclasses.replace(record, timeline=()), steps=steps)
    assert read_steps_csv(tmp_path / f"{record.run_id}.steps.csv") == steps
    store.write(record, keep_timeline=True)
    assert json.loads(store.path_for(record.run_id).read_text())["timeline"]


def test_store_directory_is_relocatable(tmp_path, make_record) -> None:
    ResultStore(tmp_path / "a").write(make_record("deli"))
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    (record,) = load_records([tmp_path / "b"])
    assert len(record.timeline) == record.metrics.measured_steps + record.spec.warmup_steps


def test_list_and_latest_follow_run_time(tmp_path, make_record) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(UsageError, match="no results in"):
        store.latest()
    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    newest = make_record("deli", when=t0 + dt.timedelta(hours=1))
    for r in (newest, make_record("bucket", when=t0), make_record("disk", when=t0 + dt.timedelta(minutes=5))):
        store.write(r)
    assert [r.spec.loader.kind for r in store.records()] == ["bucket", "disk", "deli"]
    assert store.latest().run_id == newest.run_id
    assert store.run_ids()[-1] == newest.run_id


def test_run_id_format_and_spec_hash(make_record) -> None:
    a, b = make_record("deli"), make_record("bucket")
    when = dt.datetime(2026, 11, 23, 8, 9, 10, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    run_id = new_run_id(a.spec, when)
    assert re.fullmatch(r"20261123T060910Z-[0-9a-f]{8}", run_id)  # converted to UTC
    assert spec_hash(a.spec) == spec_hash(dataclasses.replace(a.spec)) != spec_hash(b.spec)
    assert run_id.endswith(spec_hash(a.spec))
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", new_run_id(a.spec))


def test_checked_in_v1_fixture_still_reads() -> None:
    record = load_record(DATA / "v1-bucket.json")
    assert record.spec.loader.kind == "bucket" and record.schema_version == 1


def test_v0_file_is_migrated(tmp_path) -> None:
    raw = json.loads((DATA / "v0-bucket.json").read_text())
    assert "schema_version" not in raw
    migrated = load_record(DATA / "v0-bucket.json")
    assert migrated.schema_version == RESULT_SCHEMA_VERSION
    assert migrated == load_record(DATA / "v1-bucket.json")


def test_migration_chain_runs_in_order() -> None:
    seen: list[int] = []

    def to(n: int):
        def step(doc: dict) -> dict:
            seen.append(n)
            return {**doc, f"v{n}": True}

        return step

    out = migrate({"schema_version": 1}, target=3, migrations={2: to(2), 3: to(3)})
    assert seen == [2, 3] and out == {"schema_version": 3, "v2": True, "v3": True}
    with pytest.raises(UsageError, match="x.json: no migration from schema_version 1 to 2"):
        migrate({"schema_version": 1}, source="x.json", target=2, migrations={})


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_newer_version_is_refused_naming_the_file(tmp_path, make_record) -> None:
    data = json.loads(ResultStore(tmp_path).write(make_record("deli")).read_text())
    data["schema_version"] = RESULT_SCHEMA_VERSION + 1
    path = _write(tmp_path, "future.json", json.dumps(data))
    with pytest.raises(UsageError) as info:
        load_record(path)
    assert str(path) in info.value.message and "newer delibench" in info.value.message
    assert "upgrade" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"run_id": "x", ', "corrupt result file (not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema_version": "one"}', "schema_version must be a non-negative integer"),
        ('{"schema_version": 1, "run_id": "x"}', "invalid run record at (document root)"),
    ],
)
def test_bad_files_raise_usage_error_naming_the_file(tmp_path, text, expected) -> None:
    path = _write(tmp_path, "bad.json", text)
    with pytest.raises(UsageError) as info:
        load_record(path)
    assert info.value.message.startswith(f"{path}: ")
    assert expected in info.value.message


def test_missing_paths_and_empty_dirs(tmp_path) -> None:
    with pytest.raises(UsageError, match="nope.json: no such result file"):
        load_records([tmp_path / "nope.json"])
    with pytest.raises(UsageError, match="no result files in"):
        load_records([tmp_path])


def test_bad_steps_file_names_file_and_line(tmp_path, make_record) -> None:
    path = write_steps_csv(tmp_path / "s.steps.csv", make_record("bucket").timeline[:3])
    path.write_text(path.read_text() + "0,3,0,fast,0.1,16,0.5\n")
    with pytest.raises(UsageError, match=r"s\.steps\.csv:5: bad step row"):
        read_steps_csv(path)
    _write(tmp_path, "w.steps.csv", "a,b\n1,2\n")
    with pytest.raises(UsageError, match="not a delibench step file"):
        read_steps_csv(tmp_path / "w.steps.csv")


def test_write_refuses_an_invalid_record(tmp_path, make_record) -> None:
    record = make_record("bucket")
    bad = dataclasses.replace(record, metrics=dataclasses.replace(record.metrics, data_wait_fraction=-0.1))
    with pytest.raises(UsageError, match="metrics.data_wait_fraction"):
        ResultStore(tmp_path).write(bad)
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(UsageError, match="not a run id"):
        ResultStore(tmp_path).path_for("../escape")


def test_from_dict_matches_fixture_types() -> None:
    record = from_dict(RunRecord, json.loads((DATA / "v1-bucket.json").read_text()))
    assert isinstance(record.metrics.epochs, tuple) and isinstance(record.metrics.wall_s, float)


def test_json_export_list_reads_back(tmp_path, loader_trio) -> None:
    from delibench.records import to_dict

    path = tmp_path / "all.json"
    path.write_text(json.dumps([to_dict(r) for r in loader_trio]))
    assert load_records([path]) == loader_trio
    data = [to_dict(r) for r in loader_trio]
    data[1]["metrics"]["measured_steps"] = "many"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=re.escape(f"{path}[1]: invalid run record at metrics.measured_steps")):
        load_records([path])
