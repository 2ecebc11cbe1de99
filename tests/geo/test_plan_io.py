"""The plan file: YAML round trip, the GeoRunSpec it becomes, and one-line exit-2 errors of ``geo run --plan``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from delibench.cli.app import main
from delibench.geo.plan_io import GeoPlan, load_plan, plan_to_dict, plan_to_run_settings, regions_digest, write_plan
from delibench.geo.planner import SyncChoice, baselines, get_workload, plan_placement
from delibench.geo.regions import load_regions

EXAMPLE = Path(__file__).resolve().parents[2] / "geo" / "example-regions.yaml"


def _plan(sync: SyncChoice, epochs: int = 90, deadline_s: float | None = 3000) -> GeoPlan:
    config = load_regions(EXAMPLE)
    wl = get_workload("resnet50", epochs=epochs)
    best = plan_placement(config, wl, sync=sync, deadline_s=deadline_s)
    return GeoPlan(best, wl, "cost", deadline_s, None, str(EXAMPLE), regions_digest(EXAMPLE), tuple(baselines(config, wl, best, deadline_s=deadline_s)))


def test_yaml_round_trip(tmp_path: Path) -> None:
    plan = _plan(SyncChoice("ma", 64))
    assert len(plan.placement.workers) > 1 and any(d.mode == "copy" for d in plan.placement.data)
    path = tmp_path / "plan.yaml"
    write_plan(path, plan, load_regions(EXAMPLE))
    again = load_plan(path)
    assert again == plan
    assert again.placement.total_usd == plan.placement.total_usd
    doc = yaml.safe_load(path.read_text())
    assert doc["version"] == 1 and doc["plan"]["workers"][0]["type"] == "a100" and doc["plan"]["workers"][0]["billing"] == "hourly"
    assert doc["plan"]["predicted"]["total_usd"] == pytest.approx(plan.placement.total_usd)


def test_plan_to_run_settings() -> None:
    ma = _plan(SyncChoice("ma", 64))
    spec = plan_to_run_settings(ma)
    assert spec.strategy == "ma" and spec.period == 64
    assert spec.workers == tuple(ma.placement.workers.items())
    assert spec.steps == ma.placement.steps and spec.batch_size == 256
    ga = _plan(SyncChoice("asgd-ga", 16, 2))
    spec = plan_to_run_settings(ga, steps=50, seed=3)
    assert (spec.strategy, spec.accum, spec.staleness, spec.steps, spec.seed) == ("asgd-ga", 16, 2, 50, 3)


def _good_doc() -> dict[str, Any]:
    return plan_to_dict(_plan(SyncChoice("ma", 64)), load_regions(EXAMPLE))


def _edit(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    *path, last = dotted.split(".")
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


BAD = {
    "not-yaml": (None, "not valid YAML"),
    "wrong-format": (("format", "something-else"), "not a plan file"),
    "future-version": (("version", 2), "plan version 2 is not supported"),
    "unknown-strategy": (("plan.sync.strategy", "gossip"), "unknown sync strategy 'gossip'"),
    "missing-workers": (("plan.workers", KeyError), "missing key 'workers'"),
    "zero-workers": (("plan.workers.0.count", 0), "count must be a whole number >= 1"),
    "unknown-region": (("plan.workers.0.region", "mars"), "no workers in the plan"),
    "bad-mode": (("plan.data.3.mode", "teleport"), "mode must be one of"),
    "too-many-workers": (("plan.workers.0.count", 99), "has 8"),
    "other-regions-file": (("regions_sha256", "0" * 64), "different regions file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_geo_run_bad_plan_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    edit, expected = BAD[case]
    path = tmp_path / "plan.yaml"
    if edit is None:
        path.write_text("format: delibench-geo-plan\nplan: [oops\n")
    else:
        path.write_text(yaml.safe_dump(_edit(_good_doc(), *edit)))
    assert main(["geo", "run", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert expected in err and str(path) in err and "Traceback" not in err


def test_geo_run_without_regions_or_plan_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["geo", "run"]) == 2
    assert "--regions is required" in capsys.readouterr().err


def test_geo_plan_out_then_run_plan_hands_over_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from delibench.geo import launch

    out = tmp_path / "plan.yaml"
    args = ["geo", "plan", "--regions", str(EXAMPLE), "--epochs", "90", "--sync", "asgd-ga", "--sync-period", "16", "--deadline", "50min", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    seen: dict[str, Any] = {}

    class _Launched:
        events = ()
        result = SimpleNamespace(rank_results=({"losses": [0.0] * 7},), link_bytes={}, data_link_bytes={}, wall_s=1.0, compute_usd=0.0, egress_usd=0.0, total_usd=0.0)

        def to_dict(self) -> dict[str, Any]:
            return {"ok": True}

    def fake_launch(config: Any, spec: Any, **_kw: Any) -> _Launched:
        seen["spec"], seen["config"] = spec, config
        return _Launched()

    monkeypatch.setattr(launch, "launch_local", fake_launch)
    assert main(["geo", "run", "--plan", str(out), "--steps", "7", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["plan_vs_measured"]["steps"] == {"predicted": load_plan(out).placement.steps, "measured": 7}
    plan = load_plan(out)
    spec = seen["spec"]
    assert (spec.strategy, spec.accum, spec.steps) == ("asgd-ga", 16, 7)
    assert spec.workers == tuple(plan.placement.workers.items())
    assert seen["config"].source == str(EXAMPLE)
