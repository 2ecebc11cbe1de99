"""``delibench calibrate`` refuses zero or negative counts before timing anything (exit 2)."""

from __future__ import annotations

import pytest

from delibench.cli.app import main



@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--batch-size", "0"], "--batch-size"), (["-b", "-4"], "--batch-size"), (["--steps", "-1"], "--steps"),
     (["--steps", "0"], "--steps"), (["--warmup", "-1"], "--warmup")],
)
def test_calibrate_zero_or_negative_counts_exit_2(tmp_path, capsys, flags, named):
    out = tmp_path / "profiles.yaml"
    code = main(["calibrate", "--workload", "mnist-cnn", "--device", "cpu", "--steps", "2", "--warmup", "0", *flags, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err and "calibrating" not in err
    assert not out.exists()  # nothing was timed or saved
