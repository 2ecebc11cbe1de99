"""A bad ``--storage`` URL is refused before the dataset is read or the link probed."""

from __future__ import annotations

import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.records import ComputeSpec
from delibench.app.session import run
from delibench.tuning.api import prepare_tuning
from delibench.tuning.tuner import check_storage_url, open_storage


@pytest.mark.parametrize(("url", "says"), [("notaurl", "not a database URL"), ("foo://x/y", "unknown database 'foo'")])
def test_tune_rejects_storage_before_probing(tmp_path, capsys, url, says):
    # No dataset lives at --data: had the manifest been read or the link probed first, that would be the error.
    code = main(["tune", "--data", str(tmp_path / "no-dataset"), "--workload", "mnist-cnn", "--compute", "emulated:10ms", "--storage", url])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--storage" in err and says in err, err
    assert "probing" not in err and "manifest" not in err and "Traceback" not in err


def test_prepare_tuning_checks_storage_first(tmp_path):
    with pytest.raises(UsageError, match="not a database URL"):
        prepare_tuning(str(tmp_path / "no-dataset"), "mnist-cnn", compute=ComputeSpec("emulated", 0.01), mem_budget_bytes=2**20, storage="notaurl", run=run)


def test_good_urls_pass_and_open(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'studies.db'}"
    assert check_storage_url(url) == url
    assert open_storage(url) is not None and (tmp_path / "sub" / "studies.db").exists()
    with pytest.raises(UsageError, match="not a database URL"):
        open_storage("notaurl")
