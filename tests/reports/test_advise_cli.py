"""``delibench advise`` end to end on the SeaweedFS testbed behind a shaped link, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from delibench.cli.app import main
from delibench.testbed.profiles import LinkProfile
from delibench.tuning.advise import break_even_epochs

LINK = LinkProfile(name="advise-test", rtt_s=0.02)


@pytest.fixture
def dataset(s3_bucket: str, shaped_s3, tmp_path: Path) -> str:
    from delibench.loaders.publish import push
    from delibench.workloads.datagen import make_dataset

    make_dataset(tmp_path / "imgs", samples=48, classes=4, preset="cifar", seed=3)
    url = f"{s3_bucket}/imgs"
    push(tmp_path / "imgs", url)
    shaped_s3(LINK)  # every probe GET crosses a 20 ms link
    return url


@pytest.mark.s3
@pytest.mark.timeout(180)
def test_advise_on_the_testbed(dataset: str, capsys) -> None:
    args = ["advise", "--data", dataset, "--gpu", "resnet50-a100", "--gpus", "16", "--epochs", "5", "--mem-budget", "256KiB"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cluster"] == {**doc["cluster"], "instance": "p4d.24xlarge", "gpus": 16, "gpus_per_vm": 8, "vms": 2}
    assert doc["dataset"]["samples"] == 48
    probe = doc["probe"]
    assert probe["rtt_s"] >= 0.02  # the shaped link's round trip is in every GET
    s = doc["starve"]
    assert s["demand_samples_per_s_per_vm"] == pytest.approx(8 * 2470)
    assert 0 < s["predicted_au_first_epoch"] <= s["predicted_au"] <= 1
    assert s["loader"]["spec"].startswith("deli:cache_size=")
    assert s["reaches_target"] == (s["predicted_au"] >= 0.9) and (s["bound"] == "none") == s["reaches_target"]
    plan = doc["stage_or_stream"]
    st, sm = plan["stage"], plan["stream"]
    # the break-even follows from the per-epoch figures the command printed
    assert plan["break_even_usd_epochs"] == break_even_epochs(st["setup_usd"], st["epoch_usd"], sm["first_epoch_usd"], sm["epoch_usd"])
    assert plan["break_even_time_epochs"] == break_even_epochs(st["setup_s"], st["epoch_s"], sm["first_epoch_s"], sm["epoch_s"])
    assert st["total_usd"] == pytest.approx(st["setup_usd"] + st["first_epoch_usd"] + 4 * st["epoch_usd"])
    # staging copies everything to both VMs: 2 x 48 GETs at $0.0004/1000
    assert st["parts_usd"]["requests"] == pytest.approx(2 * 48 * 0.0004 / 1000)
    assert plan["cheaper"] in ("stage", "stream")

    assert main(args) == 0  # the rich tables
    out = capsys.readouterr().out
    assert "Will the GPUs starve?" in out and "Stage or stream?" in out and "break-even" in out


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--gpu", "resnet50-a1000"], "unknown GPU profile"),
        (["--gpu", "resnet50-a100", "--gpus", "0"], "--gpus must be at least 1"),
        (["--gpu", "resnet50-a100", "--target-au", "1.5"], "--target-au"),
        (["--gpu", "resnet50-a100", "--mem-budget", "lots"], "--mem-budget"),
        (["--gpu", "resnet50-a100", "--instance", "p9.huge"], "unknown instance type"),
        (["--gpu", "resnet50-a100", "--egress", "moon"], "unknown --egress"),
        (["--gpu", "resnet50-a100", "--disk", "floppy"], "unknown --disk"),
        ([], "needs --gpu"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra: list[str], words: str, capsys) -> None:
    assert main(["advise", "--data", "s3://nowhere/imgs", *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_help_has_an_example(capsys) -> None:
    assert main(["advise", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Examples:" in out and "delibench advise --data s3://my-bucket/imgs --gpu resnet50-a100 --gpus 8" in out
    for flag in ("--gpu ", "--gpus", "--epochs", "--instance", "--egress", "--mem-budget", "--vm-cpus", "--target-au", "--prices", "--json"):
        assert flag in out
