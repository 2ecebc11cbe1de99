"""The RunRecord schema: generated from the dataclasses, equal to the checked-in file, and enforced."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest

from delibench.errors import UsageError
from delibench.records import RunMetrics, RunRecord, StepSample, from_dict, to_dict
from delibench.reports import schema

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_schema_matches_generated() -> None:
    checked_in = (REPO / "schema" / "run-record.v1.json").read_text()
    assert json.loads(checked_in) == schema.record_schema(), (
        "the RunRecord dataclasses changed: regenerate with "
        "python -c 'from delibench.reports.schema import schema_json; print(schema_json(), end=\"\")' > schema/run-record.v1.json"
    )
    assert checked_in == schema.schema_json()


def test_schema_is_valid_draft_2020_12() -> None:
    import jsonschema

    doc = schema.record_schema()
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)


def test_schema_covers_every_field_and_type() -> None:
    doc = schema.record_schema()
    assert set(doc["properties"]) == {f.name for f in dataclasses.fields(RunRecord)}
    metrics = doc["$defs"]["RunMetrics"]["properties"]
    assert set(metrics) == {f.name for f in dataclasses.fields(RunMetrics)}
    assert metrics["measured_steps"]["type"] == "integer"
    assert metrics["data_wait_fraction"]["type"] == "number"
    assert (metrics["data_wait_fraction"]["minimum"], metrics["data_wait_fraction"]["maximum"]) == (0, 1)
    assert metrics["gpu_utilization_mean"]["anyOf"][-1] == {"type": "null"}
    timeline = doc["properties"]["timeline"]
    assert timeline == {"description": timeline["description"], "type": "array", "items": {"$ref": "#/$defs/StepSample"}}
    required = doc["$defs"]["StepSample"]["required"]
    assert "wait_s" in required and "start_s" not in required  # start_s has a default


def test_descriptions_come_from_attributes_sections() -> None:
    docs = schema.field_docs(StepSample)
    assert docs["wait_s"].startswith("Time blocked in")
    step = schema.record_schema()["$defs"]["StepSample"]["properties"]
    assert step["compute_s"]["description"] == docs["compute_s"]


def test_field_docs_joins_continuation_lines_and_stops_at_next_section() -> None:
    @dataclasses.dataclass
    class Sample:
        """Summary.

        Attributes:
            alpha_s: First line
                and its continuation.
            beta (int): Typed form.

        Note:
            gamma: not an attribute.
        """

        alpha_s: float
        beta: int
        gamma: int = 0

    assert schema.field_docs(Sample) == {"alpha_s": "First line and its continuation.", "beta": "Typed form."}


def test_record_round_trip_through_json(make_record) -> None:
    record = make_record("deli", hit_rate_epoch2=0.8, options={"cache_size_bytes": 2**26})
    text = json.dumps(to_dict(record))
    data = json.loads(text)
    schema.validate_record(data, source="mem.json")
    assert from_dict(RunRecord, data) == record


def test_validation_error_names_file_and_path(make_record) -> None:
    data = to_dict(make_record("bucket"))
    data["metrics"]["data_wait_fraction"] = 1.5
    with pytest.raises(UsageError) as info:
        schema.validate_record(data, source="results/x.json")
    assert str(info.value).startswith("results/x.json: invalid run record at metrics.data_wait_fraction")
    assert "1.5" in info.value.message

    data = to_dict(make_record("bucket"))
    data["timeline"][3]["wait_s"] = "slow"
    with pytest.raises(UsageError, match=r"timeline\[3\]\.wait_s"):
        schema.validate_record(data, source="y.json")

    data = to_dict(make_record("bucket"))
    data["spec"]["loader"]["colour"] = "red"
    with pytest.raises(UsageError, match=r"spec\.loader.*colour"):
        schema.validate_record(data)


def test_csv_columns_follow_the_schema(make_record) -> None:
    cols = schema.csv_columns()
    assert len(cols) == len(set(cols))
    assert "metrics.data_wait_fraction" in cols and "spec.loader.kind" in cols and "cost.usd_per_epoch" in cols
    assert not any(c.startswith(("timeline", "issues", "metrics.epochs", "metrics.ranks")) for c in cols)
    record = make_record("deli", options={"prefetch_depth": 16})
    row = schema.csv_row(record)
    assert list(row) == list(cols)
    assert row["metrics.data_wait_fraction"] == record.metrics.data_wait_fraction
    assert json.loads(row["spec.loader.options"]) == {"prefetch_depth": 16}
    assert row["cost.total_usd"] == ""  # no estimate stored yet


@pytest.mark.parametrize("module", ["schema", "store", "cost", "prices", "tables", "plots", "html", "build", "study"])
def test_public_names_sorted(module: str) -> None:
    name = "delibench.reports.store" if module == "store" else f"delibench.reports.{module}"
    mod = importlib.import_module(name)
    assert list(mod.__all__) == sorted(mod.__all__)
    for attr in mod.__all__:
        assert hasattr(mod, attr), attr
