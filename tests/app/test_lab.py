"""The lab (delibench.app.lab): testbed + dataset + storage options as data, for demo, bench and benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from delibench.app.lab import Lab, Route
from delibench.records import LoaderSpec
from delibench.testbed.profiles import get_profile


def test_a_route_carries_its_endpoint_and_profile_into_the_run_spec() -> None:
    route = Route("s3", "http://127.0.0.1:9", get_profile("cross-region"))
    opts = route.storage_options
    assert opts["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    assert opts["key"] and opts["secret"] and opts["client_kwargs"]["region_name"]
    spec = route.spec("s3://b/p", workload="resnet50", loader=LoaderSpec("deli"))
    assert spec.link_profile == "cross-region" and spec.storage_options == opts
    gcs = Route("gs", "http://127.0.0.1:8", get_profile("local")).storage_options
    assert gcs["endpoint_url"] == "http://127.0.0.1:8" and gcs["token"] == "anon"


@pytest.mark.s3
@pytest.mark.slow
def test_lab_stands_up_store_dataset_and_links_without_touching_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from delibench.manifest import read_manifest

    for key in [k for k in os.environ if k.startswith("AWS_") or k == "STORAGE_EMULATOR_HOST"]:
        monkeypatch.delenv(key)  # the options alone must reach the store
    before = dict(os.environ)
    lines: list[str] = []
    with Lab.start(tmp_path / "lab", profile="same-region") as lab:
        data = lab.dataset(tmp_path / "data", "s3://lab-test/imgs", samples=24, classes=2, preset="cifar", seed=1,
                           log=lines.append)
        assert len(data.manifest) == 24 and any("uploading" in line for line in lines)
        shaped = lab.route("s3")
        direct = lab.route("s3", direct=True)
        assert shaped.profile.name == "same-region" and direct.profile.name == "local"
        assert shaped.endpoint_url != direct.endpoint_url
        assert len(read_manifest(data.url, shaped.storage_options)) == 24
        assert lab.server_pid("s3") is not None

        lines.clear()
        again = lab.dataset(tmp_path / "data", data.url, samples=24, reuse=True, log=lines.append)
        assert len(again.manifest) == 24 and not lines  # already there: neither generated nor pushed

        link = lab.link("cross-region")
        assert link.pid is not None and link.profile.name == "cross-region"
        assert lab.link("cross-region") == link  # started once
        assert len(read_manifest(data.url, link.storage_options)) == 24
        assert link.spec(data.url, workload="resnet50", loader=LoaderSpec("bucket")).link_profile == "cross-region"
        link_pid = link.pid
    assert dict(os.environ) == before
    assert not psutil.pid_exists(link_pid) or psutil.Process(link_pid).status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "lab" / "testbed" / "testbed.json").exists()
