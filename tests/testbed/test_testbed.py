"""Testbed in-process (servers + link threads) and the ``delibench testbed`` CLI (detached)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from delibench.testbed.link import LinkEmulator
from delibench.testbed.testbed import Testbed

CLI = [sys.executable, "-m", "delibench.cli.app"]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _children() -> set[int]:
    """Pids of every live descendant of this (pytest) process."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    """Whether none of ``pids`` runs any more (zombies awaiting their reaper count as gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.1)


@pytest.mark.s3
@pytest.mark.gcs
@pytest.mark.slow
def test_in_process_testbed_serves_s3_and_gcs_through_the_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gcsfs
    import s3fs

    from delibench.storage import resolve

    before = _children()
    with Testbed.start(tmp_path / "tb", profile="same-region", services="s3,gcs") as tb:
        # The processes this testbed started (its servers and their children), seen from outside.
        pids = sorted(_children() - before)
        assert pids  # an in-process testbed still runs SeaweedFS and fake-gcs-server as child processes
        assert tb.s3_url != tb.s3_direct_url and tb.gcs_url != tb.gcs_direct_url
        env = tb.env
        assert env["AWS_ENDPOINT_URL"] == tb.s3_url
        assert env["STORAGE_EMULATOR_HOST"] == tb.gcs_url
        assert env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
        assert env["DELIBENCH_LINK_PROFILE"] == "same-region"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        gcsfs.GCSFileSystem.clear_instance_cache()
        payload = os.urandom(150_000)
        for url in (tb.make_bucket("tb-data"), tb.make_bucket("tb-data", "gs")):
            assert tb.make_bucket(url.split("://")[1], url.split("://")[0]) == url  # idempotent
            loc = resolve(url)
            fs = loc.filesystem()
            fs.pipe(loc.child("dir/obj.bin"), payload)
            assert fs.cat(loc.child("dir/obj.bin")) == payload
        s3_link, gcs_link = tb.links
        assert isinstance(s3_link, LinkEmulator)
        assert s3_link.stats().bytes_server_to_client >= len(payload)
        assert gcs_link.stats().bytes_server_to_client >= len(payload)
    assert _gone(pids)
    s3fs.S3FileSystem.clear_instance_cache()
    gcsfs.GCSFileSystem.clear_instance_cache()


def test_local_profile_has_no_emulator(tmp_path: Path) -> None:
    with Testbed.start(tmp_path / "tb", profile="local", services=("gcs",)) as tb:
        assert tb.gcs_url == tb.gcs_direct_url
        assert tb.links == []
        assert "AWS_ENDPOINT_URL" not in tb.env


@pytest.mark.s3
@pytest.mark.gcs
@pytest.mark.slow
def test_cli_up_status_env_down_leaves_nothing(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "bed")
    up = _cli("testbed", "up", "--dir", data_dir, "--profile", "cross-region", "--rtt", "30ms", "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    pids = [p["pid"] for p in state["processes"]]
    try:
        assert {p["name"] for p in state["processes"]} == {"seaweedfs", "fake-gcs-server", "link-s3", "link-gcs"}
        assert state["profile"]["rtt_s"] == pytest.approx(0.030)

        again = _cli("testbed", "up", "--dir", data_dir, "--json")  # harmless: reports the running one
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr
        assert [p["pid"] for p in json.loads(again.stdout)["processes"]] == pids

        status = _cli("testbed", "status", "--dir", data_dir, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["running"] is True

        exports = _cli("testbed", "env", "--dir", data_dir)
        assert exports.returncode == 0
        lines = exports.stdout.strip().splitlines()
        assert all(line.startswith("export ") for line in lines)
        # The exported variables work for a fresh client process (through the shaped endpoint).
        script = (
            "import botocore.session; c = botocore.session.get_session().create_client('s3'); c.create_bucket(Bucket='cli-bucket');"
            "c.put_object(Bucket='cli-bucket', Key='k', Body=b'v');"
            "print(c.get_object(Bucket='cli-bucket', Key='k')['Body'].read().decode())"
        )
        shell = f'eval "$({" ".join(CLI)} testbed env --dir {data_dir})" && {sys.executable} -c "{script}"'
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        used = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60, env=env)
        assert used.returncode == 0, used.stderr
        assert used.stdout.strip() == "v"
        as_json = json.loads(_cli("testbed", "env", "--dir", data_dir, "--shell", "json").stdout)
        assert as_json["AWS_ENDPOINT_URL"] == state["s3_url"]

        # A crashed part is reported, not hidden.
        link_pid = next(p["pid"] for p in state["processes"] if p["name"] == "link-gcs")
        os.kill(link_pid, 9)
        assert _gone([link_pid])
        broken = _cli("testbed", "status", "--dir", data_dir)
        assert broken.returncode == 1
        assert "link-gcs" in broken.stderr and "Traceback" not in broken.stderr
    finally:
        down = _cli("testbed", "down", "--dir", data_dir)
    assert down.returncode == 0, down.stderr
    assert _gone(pids)
    sockets = [s for p in state["processes"] for s in p["sockets"]]
    assert sockets and not any(Path(s).exists() for s in sockets)
    assert _cli("testbed", "status", "--dir", data_dir).returncode == 1


@pytest.mark.parametrize(
    "args",
    [
        ("testbed", "up", "--profile", "cross-regoin"),
        ("testbed", "up", "--rtt", "fast"),
        ("testbed", "up", "--services", "s3,ftp"),
        ("testbed", "env", "--shell", "tcsh"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _cli(*args, "--dir", str(tmp_path / "none"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    if "cross-regoin" in args:
        assert "did you mean 'cross-region'" in result.stderr
    assert not (tmp_path / "none" / "testbed.json").exists()


def test_two_testbeds_cannot_share_a_directory(tmp_path: Path) -> None:
    from delibench.errors import UsageError

    with Testbed.start(tmp_path / "tb", profile="local", services=("gcs",)) as tb:
        with pytest.raises(UsageError, match="already running|another testbed"):
            Testbed.start(tmp_path / "tb", profile="local", services=("gcs",))
        assert tb.gcs_direct_url
    with Testbed.start(tmp_path / "tb", profile="local", services=("gcs",)):  # free again after stop
        pass
